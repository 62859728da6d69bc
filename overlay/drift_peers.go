package overlay

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Drift of the WireGuard peers (drift_linux.go has the contract): the
// device's peers, read with a UAPI "get" in process, against o.peers, what
// SyncPeers last configured. The repair goes through syncPeersLocked, the
// same function SyncPeers uses, so it follows however SyncPeers talks to
// the device.

// peerDrift returns a drift for each peer that the device lacks, that the
// device has and the overlay did not configure, or whose allowed IPs
// differ.
func (o *Overlay) peerDrift() ([]drift, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil, nil
	}
	have, err := o.devicePeersLocked()
	if err != nil {
		return nil, err
	}
	var out []drift
	add := func(k wgtypes.Key, detail string) {
		out = append(out, drift{kind: DriftPeer, object: "peer " + k.String(), detail: detail,
			fix: func() error { return o.repairPeer(k) }})
	}
	for _, k := range sortedKeys(o.peers) {
		ips, ok := have[k]
		switch {
		case !ok:
			add(k, "missing")
		case !samePrefixes(ips, o.peers[k].AllowedIPs):
			add(k, fmt.Sprintf("allowed IPs %v, want %v", ips, o.peers[k].AllowedIPs))
		}
	}
	for k := range have {
		if _, ok := o.peers[k]; !ok {
			add(k, "not configured by weft")
		}
	}
	return out, nil
}

// repairPeer makes peer k of the device what SyncPeers last configured:
// o.peers learns what the device really has for k, and syncPeersLocked
// changes that back.
func (o *Overlay) repairPeer(k wgtypes.Key) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	have, err := o.devicePeersLocked()
	if err != nil {
		return err
	}
	want := make([]Peer, 0, len(o.peers))
	for _, p := range o.peers {
		want = append(want, p)
	}
	believed := make(map[wgtypes.Key]Peer, len(o.peers)+1)
	for key, p := range o.peers {
		believed[key] = p
	}
	if ips, ok := have[k]; ok {
		p := believed[k]
		p.PublicKey, p.AllowedIPs = k, ips
		believed[k] = p
	} else {
		delete(believed, k)
	}
	o.peers = believed
	return o.syncPeersLocked(want)
}

// devicePeersLocked returns the device's peers and their allowed IPs.
// Needs o.mu.
func (o *Overlay) devicePeersLocked() (map[wgtypes.Key][]netip.Prefix, error) {
	text, err := o.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("read WireGuard peers: %w", err)
	}
	return parseUAPIPeers(text)
}

// parseUAPIPeers reads the peers and their allowed IPs from the text of a
// UAPI "get".
func parseUAPIPeers(text string) (map[wgtypes.Key][]netip.Prefix, error) {
	out := map[wgtypes.Key][]netip.Prefix{}
	var cur *wgtypes.Key
	sc := bufio.NewScanner(strings.NewReader(text))
	for line := 1; sc.Scan(); line++ {
		key, value, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch key {
		case "public_key":
			b, err := hex.DecodeString(value)
			if err != nil || len(b) != wgtypes.KeyLen {
				return nil, fmt.Errorf("WireGuard UAPI line %d: bad public_key %q", line, value)
			}
			k := wgtypes.Key(b)
			cur = &k
			out[k] = nil
		case "allowed_ip":
			p, err := netip.ParsePrefix(value)
			if err != nil || cur == nil {
				return nil, fmt.Errorf("WireGuard UAPI line %d: bad allowed_ip %q", line, value)
			}
			out[*cur] = append(out[*cur], p)
		}
	}
	return out, sc.Err()
}

// samePrefixes compares a and b as sets.
func samePrefixes(a, b []netip.Prefix) bool {
	sorted := func(p []netip.Prefix) []netip.Prefix {
		p = slices.Clone(p)
		slices.SortFunc(p, func(x, y netip.Prefix) int {
			if c := x.Addr().Compare(y.Addr()); c != 0 {
				return c
			}
			return x.Bits() - y.Bits()
		})
		return slices.Compact(p)
	}
	return slices.Equal(sorted(a), sorted(b))
}
