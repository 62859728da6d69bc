package overlay

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeepaliveSeconds is the persistent keepalive of every peer. It keeps
// handshakes fresh (so `weft status` shows live peers) at a cost of one
// small packet per peer every 25 s.
const KeepaliveSeconds = 25

// keepaliveInterval is KeepaliveSeconds as wgtypes.PeerConfig takes it.
// Setting it makes wireguard-go send a keepalive at once, and so start a
// handshake.
var keepaliveInterval = KeepaliveSeconds * time.Second

// peerDiff returns the peer configuration that turns the peer set have into
// want, want as a map, and the new peers whose keepalive is to be turned on
// later (see initiates). The configuration is empty when nothing changes.
// Order is stable (removals, then changes, each by key) so that the result
// is deterministic.
//
// It names each peer that changes rather than setting ReplacePeers: replace
// would remove every peer first, and with it every session and staged
// packet, on each change of one.
func peerDiff(self wgtypes.Key, have map[wgtypes.Key]Peer, want []Peer) ([]wgtypes.PeerConfig, map[wgtypes.Key]Peer, []wgtypes.Key) {
	var later []wgtypes.Key
	var cfg []wgtypes.PeerConfig
	next := make(map[wgtypes.Key]Peer, len(want))
	for _, p := range want {
		next[p.PublicKey] = p
	}
	for _, k := range sortedKeys(have) {
		if _, ok := next[k]; !ok {
			cfg = append(cfg, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		}
	}
	for _, k := range sortedKeys(next) {
		p := next[k]
		if old, ok := have[k]; ok && samePeer(old, p) {
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: k, ReplaceAllowedIPs: true, AllowedIPs: ipNets(p.AllowedIPs)}
		if p.Endpoint.IsValid() {
			pc.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
		}
		if _, known := have[k]; !known {
			if initiates(self, k) {
				pc.PersistentKeepaliveInterval = &keepaliveInterval
			} else {
				later = append(later, k)
			}
		}
		cfg = append(cfg, pc)
	}
	return cfg, next, later
}

// ipNets converts prefixes to the form wgtypes takes.
func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		out[i] = net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	return out
}

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
