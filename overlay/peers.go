package overlay

import (
	"bytes"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeepaliveSeconds is the persistent keepalive of every peer. It keeps
// handshakes fresh (so `weft status` shows live peers) at a cost of one
// small packet per peer every 25 s.
const KeepaliveSeconds = 25

func hexKey(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }

// peerDiff returns the UAPI "set" text that turns the peer set have into want,
// want as a map, and the new peers whose keepalive is to be turned on later
// (see initiates). The text is empty when nothing changes. Order is stable
// (by key) so that the result is deterministic.
func peerDiff(self wgtypes.Key, have map[wgtypes.Key]Peer, want []Peer) (string, map[wgtypes.Key]Peer, []wgtypes.Key) {
	var later []wgtypes.Key
	next := make(map[wgtypes.Key]Peer, len(want))
	for _, p := range want {
		next[p.PublicKey] = p
	}
	var b strings.Builder
	for _, k := range sortedKeys(have) {
		if _, ok := next[k]; !ok {
			b.WriteString("public_key=" + hexKey(k) + "\nremove=true\n")
		}
	}
	for _, k := range sortedKeys(next) {
		p := next[k]
		if old, ok := have[k]; ok && samePeer(old, p) {
			continue
		}
		b.WriteString("public_key=" + hexKey(k) + "\n")
		if p.Endpoint.IsValid() {
			b.WriteString("endpoint=" + p.Endpoint.String() + "\n")
		}
		if _, known := have[k]; !known {
			if initiates(self, k) {
				b.WriteString(keepaliveOn)
			} else {
				later = append(later, k)
			}
		}
		b.WriteString("replace_allowed_ips=true\n")
		for _, a := range p.AllowedIPs {
			b.WriteString("allowed_ip=" + a.String() + "\n")
		}
	}
	return b.String(), next, later
}

// keepaliveOn turns persistent keepalive on. Turning it on makes
// wireguard-go send a keepalive at once, and so start a handshake.
var keepaliveOn = "persistent_keepalive_interval=" + strconv.Itoa(KeepaliveSeconds) + "\n"

// KeepaliveDelay is how long the cell that does not initiate waits before it
// turns keepalive on for a new peer.
const KeepaliveDelay = time.Second

// initiates reports whether this cell (public key self) starts the handshake
// with a new peer at once. Two cells usually learn of each other in the same
// millisecond (a cell comes back, a partition heals); if both sent an
// initiation, each would answer the other's and drop the answer to its own,
// and neither would have a session until wireguard-go retries 5 s later. So
// the smaller key initiates when it adds the peer, and the larger one turns
// its keepalive on KeepaliveDelay later (by then, usually, to find a session
// ready; if the first initiation was lost because the peer did not know us
// yet, this one starts the handshake).
func initiates(self, peer wgtypes.Key) bool {
	return bytes.Compare(self[:], peer[:]) < 0
}

func samePeer(a, b Peer) bool {
	return a.PublicKey == b.PublicKey && a.Endpoint == b.Endpoint && slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

func sortedKeys(m map[wgtypes.Key]Peer) []wgtypes.Key {
	keys := make([]wgtypes.Key, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b wgtypes.Key) int { return strings.Compare(string(a[:]), string(b[:])) })
	return keys
}
