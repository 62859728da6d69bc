package overlay

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/lab"
)

func TestPeerDiff(t *testing.T) {
	var self, k1, k2 [32]byte
	self[0], k1[0], k2[0] = 5, 1, 9 // k1 < self < k2
	p1 := Peer{PublicKey: k1, Endpoint: netip.MustParseAddrPort("127.0.0.1:51820"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.255.1.0/24")}}
	cfg, next, later := peerDiff(self, nil, []Peer{p1})
	if len(cfg) != 1 || cfg[0].PublicKey != k1 || cfg[0].Remove || !cfg[0].ReplaceAllowedIPs ||
		cfg[0].Endpoint.String() != "127.0.0.1:51820" ||
		len(cfg[0].AllowedIPs) != 1 || cfg[0].AllowedIPs[0].String() != "10.255.1.0/24" || len(next) != 1 {
		t.Fatalf("add: %+v", cfg)
	}
	// k1 is smaller: k1 initiates, we turn keepalive on later.
	if cfg[0].PersistentKeepaliveInterval != nil || len(later) != 1 || later[0] != k1 {
		t.Fatalf("larger key must wait: %+v later %v", cfg, later)
	}
	if cfg, _, _ := peerDiff(self, next, []Peer{p1}); len(cfg) != 0 {
		t.Fatalf("no change produced %+v", cfg)
	}
	cfg, next, later = peerDiff(self, next, []Peer{{PublicKey: k2}})
	if len(cfg) != 2 || cfg[0].PublicKey != k1 || !cfg[0].Remove ||
		cfg[1].PublicKey != k2 || cfg[1].Remove || cfg[1].Endpoint != nil || len(next) != 1 {
		t.Fatalf("replace: %+v", cfg)
	}
	// We are smaller than k2: we initiate at once.
	if ka := cfg[1].PersistentKeepaliveInterval; ka == nil || *ka != KeepaliveSeconds*time.Second || len(later) != 0 {
		t.Fatalf("smaller key must initiate: %+v later %v", cfg, later)
	}
}

// TestSyncPeersUAPI: SyncPeers configures the device through wgctrl over its
// UAPI socket, and what wgctrl reads back (as `wg show` would) is the peer
// set asked for: added, changed in place, removed, keepalive on at once for
// the peer this cell initiates with and KeepaliveDelay later for the other.
func TestSyncPeersUAPI(t *testing.T) {
	lab.RequireRoot(t)               // the socket is in /var/run/wireguard
	name := lab.RunPrefix() + "c999" // the lab's stale cleanup knows the form; no cell has it
	self := gateKey(t)
	o := &Overlay{cfg: Config{Interface: name, PrivateKey: self}, log: slog.New(slog.DiscardHandler),
		peers: make(map[wgtypes.Key]Peer), stop: make(chan struct{})}
	o.wrap = NewWrapper(tuntest.NewChannelTUN().TUN(), OpenFilter{})
	o.startDevice(bindtest.NewChannelBinds()[0], 0, device.Options{})
	t.Cleanup(func() {
		close(o.stop)
		if o.wg != nil {
			o.wg.Close()
		}
		if o.uapi != nil {
			o.uapi.Close()
		}
		o.dev.Close()
	})
	if err := o.listenUAPI(); err != nil {
		t.Fatal(err)
	}
	port := 0
	if err := o.configure(wgtypes.Config{PrivateKey: &self, ListenPort: &port}); err != nil {
		t.Fatal(err)
	}

	// first: the peer this cell initiates with; second: the other.
	var first, second wgtypes.Key
	for first == second || !initiates(self.PublicKey(), first) || initiates(self.PublicKey(), second) {
		k := gateKey(t).PublicKey()
		if initiates(self.PublicKey(), k) {
			first = k
		} else {
			second = k
		}
	}
	// The channel bind keeps only an endpoint's port (it reads back as
	// 127.0.0.1:port): the endpoints are loopback ones.
	pfx := netip.MustParsePrefix
	want := []Peer{
		{PublicKey: first, Endpoint: netip.MustParseAddrPort("127.0.0.1:51820"), AllowedIPs: []netip.Prefix{pfx("10.255.1.0/24")}},
		{PublicKey: second, AllowedIPs: []netip.Prefix{pfx("10.255.2.0/24"), pfx("10.255.9.0/24")}},
	}
	if err := o.SyncPeers(want); err != nil {
		t.Fatal(err)
	}
	c, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read := func() map[wgtypes.Key]wgtypes.Peer {
		t.Helper()
		d, err := c.Device(name)
		if err != nil {
			t.Fatalf("wgctrl Device(%s): %v", name, err)
		}
		if d.PrivateKey != self {
			t.Fatalf("private key not set through the socket")
		}
		m := make(map[wgtypes.Key]wgtypes.Peer)
		for _, p := range d.Peers {
			m[p.PublicKey] = p
		}
		return m
	}
	nets := func(p wgtypes.Peer) []string {
		var s []string
		for _, a := range p.AllowedIPs {
			s = append(s, a.String())
		}
		slices.Sort(s)
		return s
	}
	got := read()
	if len(got) != 2 {
		t.Fatalf("peers after add: %v", got)
	}
	if p := got[first]; p.Endpoint.String() != "127.0.0.1:51820" ||
		!slices.Equal(nets(p), []string{"10.255.1.0/24"}) || p.PersistentKeepaliveInterval != KeepaliveSeconds*time.Second {
		t.Fatalf("first peer: %+v", p)
	}
	if p := got[second]; p.Endpoint != nil || !slices.Equal(nets(p), []string{"10.255.2.0/24", "10.255.9.0/24"}) {
		t.Fatalf("second peer: %+v", p)
	}
	// The other side initiates; keepalive follows KeepaliveDelay later.
	for deadline := time.Now().Add(10 * KeepaliveDelay); read()[second].PersistentKeepaliveInterval != KeepaliveSeconds*time.Second; {
		if time.Now().After(deadline) {
			t.Fatalf("keepalive of the second peer still %v", read()[second].PersistentKeepaliveInterval)
		}
		time.Sleep(50 * time.Millisecond) // polling, with a deadline
	}

	// Change second's allowed IPs and endpoint in place, remove first.
	want = []Peer{{PublicKey: second, Endpoint: netip.MustParseAddrPort("127.0.0.1:51821"), AllowedIPs: []netip.Prefix{pfx("10.255.3.0/24")}}}
	if err := o.SyncPeers(want); err != nil {
		t.Fatal(err)
	}
	got = read()
	if _, ok := got[first]; ok || len(got) != 1 {
		t.Fatalf("peers after remove: %v", got)
	}
	if p := got[second]; p.Endpoint.String() != "127.0.0.1:51821" ||
		!slices.Equal(nets(p), []string{"10.255.3.0/24"}) || p.PersistentKeepaliveInterval != KeepaliveSeconds*time.Second {
		t.Fatalf("second peer after change: %+v", p)
	}
}
