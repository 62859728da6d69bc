package overlay

import (
	"errors"
	"github.com/weft-net/weft/internal/lab"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func newKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestPeerDriftRepaired: a peer removed behind the overlay's back (as `wg
// set IFACE peer KEY remove` does over UAPI), a peer it never configured,
// and a peer whose allowed IPs were changed are each put back as SyncPeers
// last configured them, and counted.
func TestPeerDriftRepaired(t *testing.T) {
	lab.RequireRoot(t) // peers are configured through the UAPI socket, in /var/run/wireguard
	tt := tuntest.NewChannelTUN()
	o := &Overlay{log: testLogger(t), stop: make(chan struct{}), peers: map[wgtypes.Key]Peer{}}
	o.cfg.PrivateKey = newKey(t)
	o.cfg.Interface = lab.RunPrefix() + "c998" // the lab's stale cleanup knows the form; no cell has it
	o.wrap = NewWrapper(tt.TUN(), OpenFilter{})
	o.dev = device.NewDevice(o.wrap, bindtest.NewChannelBinds()[0], wgLogger(o.log))
	defer func() {
		// As Close does: keepaliveOn, due a second after SyncPeers,
		// then does nothing.
		o.mu.Lock()
		o.closed = true
		o.mu.Unlock()
		if o.wg != nil {
			o.wg.Close()
		}
		if o.uapi != nil {
			o.uapi.Close()
		}
		o.dev.Close()
	}()
	if err := o.listenUAPI(); err != nil {
		t.Fatal(err)
	}

	a, b, x := newKey(t).PublicKey(), newKey(t).PublicKey(), newKey(t).PublicKey()
	want := []Peer{
		{PublicKey: a, Endpoint: netip.MustParseAddrPort("127.0.0.1:1"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.255.2.0/24")}},
		{PublicKey: b, Endpoint: netip.MustParseAddrPort("127.0.0.1:2"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.255.3.0/24")}},
	}
	if err := o.SyncPeers(want); err != nil {
		t.Fatal(err)
	}
	r := newReconciler(Config{}, o.log, nil, o.peerDrift)
	r.pass(checkPeers, false)
	if n := r.counts()[DriftPeer]; n != 0 {
		t.Fatalf("%d peer repairs with nothing changed", n)
	}

	if err := o.dev.IpcSet("public_key=" + hexKey(a) + "\nremove=true\n" +
		"public_key=" + hexKey(x) + "\nallowed_ip=10.255.9.0/24\n" +
		"public_key=" + hexKey(b) + "\nreplace_allowed_ips=true\nallowed_ip=10.255.0.0/16\n"); err != nil {
		t.Fatal(err)
	}
	r.pass(checkPeers, false)
	o.mu.Lock()
	have, err := o.devicePeersLocked()
	o.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	wantHave := map[wgtypes.Key][]netip.Prefix{a: want[0].AllowedIPs, b: want[1].AllowedIPs}
	if len(have) != len(wantHave) {
		t.Fatalf("device peers after repair: %v, want %v", have, wantHave)
	}
	for k, ips := range wantHave {
		if !samePrefixes(have[k], ips) {
			t.Fatalf("device peer %v after repair: %v, want %v", k, have[k], ips)
		}
	}
	if n := r.counts()[DriftPeer]; n != 3 {
		t.Fatalf("%d peer repairs, want 3 (removed, foreign, allowed IPs)", n)
	}
	r.pass(checkPeers, false)
	if n := r.counts()[DriftPeer]; n != 3 {
		t.Fatalf("%d peer repairs after a pass with nothing changed, want still 3", n)
	}
}

func TestParseUAPIPeers(t *testing.T) {
	k := newKey(t).PublicKey()
	got, err := parseUAPIPeers("private_key=00\nlisten_port=1\npublic_key=" + hexKey(k) +
		"\nendpoint=1.2.3.4:5\nallowed_ip=10.255.2.0/24\nallowed_ip=10.255.7.0/24\nprotocol_version=1\nerrno=0\n")
	if err != nil || len(got) != 1 || !slices.Equal(got[k], []netip.Prefix{
		netip.MustParsePrefix("10.255.2.0/24"), netip.MustParsePrefix("10.255.7.0/24")}) {
		t.Fatalf("parseUAPIPeers = %v, %v", got, err)
	}
	if _, err := parseUAPIPeers("public_key=zz\n"); err == nil {
		t.Fatal("bad public_key accepted")
	}
	if _, err := parseUAPIPeers("allowed_ip=10.0.0.0/8\n"); err == nil {
		t.Fatal("allowed_ip before any peer accepted")
	}
}

// TestDriftBackoff: an object whose repair keeps failing (or keeps being
// undone) is repaired driftFreeRepairs times, then at growing intervals,
// and starts afresh once it has been left alone for driftQuiet.
func TestDriftBackoff(t *testing.T) {
	r := newReconciler(Config{}, testLogger(t), nil, nil)
	calls := 0
	fail := true
	d := drift{kind: DriftRoute, object: "route 10.255.0.0/16 dev weft0 table 254", detail: "missing",
		fix: func() error {
			calls++
			if fail {
				return errors.New("operation not permitted")
			}
			return nil
		}}
	t0 := time.Now()
	var tries []int // seconds after t0 of each attempt
	for s := range 20 {
		before := calls
		r.apply([]drift{d}, t0.Add(time.Duration(s)*time.Second), map[string]bool{})
		if calls > before {
			tries = append(tries, s)
		}
	}
	// 3 free, then after 2 s, 4 s, 8 s.
	if want := []int{0, 1, 2, 3, 5, 9, 17}; !slices.Equal(tries, want) {
		t.Fatalf("attempts at %v s, want %v", tries, want)
	}
	if n := r.counts()[DriftRoute]; n != 0 {
		t.Fatalf("failed repairs counted: %d", n)
	}
	// Fine for driftQuiet after the last attempt: it starts afresh.
	quiet := t0.Add(17*time.Second + driftQuiet + time.Second)
	fail = false
	r.apply([]drift{d}, quiet, map[string]bool{})
	if n := r.counts()[DriftRoute]; n != 1 || r.attempts[d.kind+" "+d.object].n != 1 {
		t.Fatalf("after a quiet spell: %d repairs counted, %d in a row; want 1, 1", n, r.attempts[d.kind+" "+d.object].n)
	}
}
