package overlay

import (
	"encoding/hex"
	"slices"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeepaliveSeconds is the persistent keepalive of every peer. It keeps
// handshakes fresh (so `weft status` shows live peers) at a cost of one
// small packet per peer every 25 s.
const KeepaliveSeconds = 25

func hexKey(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }

// peerDiff returns the UAPI "set" text that turns the peer set have into want,
// and want as a map. The text is empty when nothing changes. Order is stable
// (by key) so that the result is deterministic.
func peerDiff(have map[wgtypes.Key]Peer, want []Peer) (string, map[wgtypes.Key]Peer) {
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
			// Turning keepalive on makes wireguard-go send one at
			// once, so the cell that learns of a peer starts the
			// handshake: a new cell is reachable without waiting for
			// a retransmitted initiation that the other side dropped
			// before it knew our key.
			b.WriteString("persistent_keepalive_interval=" + strconv.Itoa(KeepaliveSeconds) + "\n")
		}
		b.WriteString("replace_allowed_ips=true\n")
		for _, a := range p.AllowedIPs {
			b.WriteString("allowed_ip=" + a.String() + "\n")
		}
	}
	return b.String(), next
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
