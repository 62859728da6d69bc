package overlay

import (
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestPartialTCPDestinations(t *testing.T) {
	peers := []Peer{
		{AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.255.2.0/24")}, PartialTCPChecksum: true},
		{AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.255.3.0/24")}}, // announces nothing
	}
	setPeers := func(o *Overlay) {
		o.peers = make(map[wgtypes.Key]Peer)
		for i, p := range peers {
			p.PublicKey[0] = byte(i + 1)
			o.peers[p.PublicKey] = p
		}
		o.setPartialPeersLocked()
	}
	newOverlay := func(on bool) *Overlay {
		o := &Overlay{cfg: Config{LocalSubnet: netip.MustParsePrefix("10.255.1.0/24")}}
		o.partial.on = on
		setPeers(o)
		return o
	}
	o := newOverlay(true)
	for _, c := range []struct {
		dst  []byte
		want bool
	}{
		{[]byte{10, 255, 1, 7}, true},  // own container (hair-pin)
		{[]byte{10, 255, 2, 7}, true},  // a peer that announces it
		{[]byte{10, 255, 3, 7}, false}, // a peer that does not
		{[]byte{10, 255, 4, 7}, false}, // no peer
		{netip.MustParseAddr("fd00::1").AsSlice(), false},
		{[]byte{10, 255, 1}, false}, // not an address
	} {
		if got := o.partial.accepts(c.dst); got != c.want {
			t.Errorf("accepts(%v) = %v, want %v", c.dst, got, c.want)
		}
	}
	// The peer stops announcing it.
	peers[0].PartialTCPChecksum = false
	setPeers(o)
	if o.partial.accepts([]byte{10, 255, 2, 7}) {
		t.Error("accepts a peer that no longer announces it")
	}
	peers[0].PartialTCPChecksum = true
	// Off (no offloads, or --partial-tcp-checksums=false): nothing.
	if off := newOverlay(false); off.partial.accepts([]byte{10, 255, 1, 7}) || off.partial.accepts([]byte{10, 255, 2, 7}) {
		t.Error("accepts with partial checksums off")
	}
}
