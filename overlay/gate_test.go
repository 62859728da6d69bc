package overlay

import (
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// hexKey is a key as UAPI text takes it. The tests' devices are in-process
// ones with no UAPI socket, configured with IpcSet.
func hexKey(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }

func gateKey(t testing.TB) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// cellPeers returns n peers owning 10.255.(i+1).0/24.
func cellPeers(t testing.TB, n int) ([]wgtypes.Key, map[wgtypes.Key]Peer) {
	keys := make([]wgtypes.Key, n)
	peers := make(map[wgtypes.Key]Peer, n)
	for i := range keys {
		keys[i] = gateKey(t).PublicKey()
		peers[keys[i]] = Peer{PublicKey: keys[i], AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(i + 1), 0}), 24)}}
	}
	return keys, peers
}

func pktTo(dst netip.Addr) []byte {
	return tuntest.Ping(dst, netip.MustParseAddr("10.255.0.2"))
}

func TestStageGate(t *testing.T) {
	var now int64 = 1e18
	g := newStageGate()
	g.now = func() int64 { return now }
	keys, peers := cellPeers(t, 10)
	g.setPeers(peers)
	to := func(i int) []byte { return pktTo(netip.AddrFrom4([4]byte{10, 255, byte(i + 1), 7})) }

	// New peers have no session: each may hold stageMaxPerPeer packets,
	// all of them together stageMaxTotal.
	passed := make([]int, len(keys))
	for i := range keys {
		for range 2 * stageMaxPerPeer {
			if g.allow(to(i)) {
				passed[i]++
			}
		}
	}
	want := make([]int, len(keys))
	for i := range want {
		want[i] = min(stageMaxPerPeer, max(0, stageMaxTotal-i*stageMaxPerPeer))
	}
	if !slices.Equal(passed, want) {
		t.Fatalf("passed %v, want %v", passed, want)
	}
	if !g.allow(pktTo(netip.MustParseAddr("10.254.0.1"))) || !g.allow([]byte{0x60, 0}) {
		t.Error("a packet for no peer, or not IPv4, must pass (wireguard-go drops it)")
	}

	// Peer 0 gets a session: its packets were sent, it is not limited.
	hs := map[wgtypes.Key]int64{keys[0]: now - int64(time.Second)}
	var flushed []wgtypes.Key
	flush := func(k wgtypes.Key) { flushed = append(flushed, k) }
	if !g.update(func(k wgtypes.Key) int64 { return hs[k] }, flush) {
		t.Error("update: peers without a session remain")
	}
	for range 100 {
		if !g.allow(to(0)) {
			t.Fatal("a peer with a session was limited")
		}
	}
	// The total freed up by peer 0 goes to the next peer without a session.
	if !g.allow(to(8)) || g.allow(to(9)) == false && g.total.Load() > stageMaxTotal {
		t.Errorf("total %d after peer 0's release", g.total.Load())
	}
	if len(flushed) != 0 {
		t.Errorf("flushed %v before stageFlushAfter", flushed)
	}

	// Later the waiting packets of the other peers are dropped.
	now += int64(stageFlushAfter) + 1
	g.update(func(k wgtypes.Key) int64 { return hs[k] }, flush)
	if len(flushed) != 9 || slices.Contains(flushed, keys[0]) {
		t.Errorf("flushed %d peers (peer 0 among them: %v), want the 9 without a session", len(flushed), slices.Contains(flushed, keys[0]))
	}
	if g.total.Load() != 0 {
		t.Errorf("total %d after the flush", g.total.Load())
	}

	// Too old a handshake is no session; a removed peer's count is
	// released; with every session up the gate is inactive.
	hs[keys[0]] = now - int64(sessionLifetime) - 1
	g.update(func(k wgtypes.Key) int64 { return hs[k] }, flush)
	if !g.allow(to(0)) || g.total.Load() != 1 {
		t.Errorf("peer 0 after its session expired: total %d", g.total.Load())
	}
	delete(peers, keys[0])
	g.setPeers(peers)
	if g.total.Load() != 0 {
		t.Errorf("total %d after removing the peer", g.total.Load())
	}
	for _, k := range keys {
		hs[k] = now
	}
	if g.update(func(k wgtypes.Key) int64 { return hs[k] }, flush) || g.active.Load() {
		t.Error("gate active with every session up")
	}
}

// gateDevice is a wireguard-go device behind a Wrapper on a channel TUN,
// with its message buffers bounded as overlay.New bounds them (bounded).
type gateDevice struct {
	tun  *tuntest.ChannelTUN
	dev  *device.Device
	wrap *Wrapper
	key  wgtypes.Key
}

func newGateDevice(t *testing.T, bind conn.Bind, name string, bounded bool) *gateDevice {
	t.Helper()
	d := &gateDevice{tun: tuntest.NewChannelTUN(), key: gateKey(t)}
	d.wrap = NewWrapper(d.tun.TUN(), OpenFilter{})
	var opts device.Options
	if bounded {
		p, err := newMsgPool(minMessageBuffers)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.close) // after the device is closed
		opts.MessageBuffers = p
	}
	d.dev = device.NewDeviceWithOptions(d.wrap, bind, device.NewLogger(device.LogLevelSilent, name+": "), opts)
	if err := d.dev.IpcSet("private_key=" + hexKey(d.key) + "\nlisten_port=0\n"); err != nil {
		t.Fatal(err)
	}
	if err := d.dev.Up(); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *gateDevice) port(t *testing.T) string {
	t.Helper()
	s, err := d.dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(l, "listen_port="); ok {
			return v
		}
	}
	t.Fatal("no listen_port")
	return ""
}

// send hands pkt to d's TUN reader; false if it did not take it in time
// (it is waiting for a message buffer).
func (d *gateDevice) send(pkt []byte, wait time.Duration) bool {
	select {
	case d.tun.Outbound <- pkt:
		return true
	case <-time.After(wait):
		return false
	}
}

// TestStageGateKeepsSending: a cell whose bounded buffers are held by
// peers without a session stops sending to everyone; with the gate it does
// not. Cell a has a live peer b and six unreachable peers (no endpoint),
// and its containers send 200 packets to each of those.
func TestStageGateKeepsSending(t *testing.T) {
	for _, gated := range []bool{false, true} {
		t.Run(fmt.Sprintf("gated=%v", gated), func(t *testing.T) {
			binds := bindtest.NewChannelBinds()
			a := newGateDevice(t, binds[0], "a", true)
			b := newGateDevice(t, binds[1], "b", false)
			defer b.dev.Close()
			defer a.dev.Close()
			_, dead := cellPeers(t, 7) // 10.255.1-7.0/24
			live := Peer{PublicKey: b.key.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.255.0.0/24")}}
			var cfg strings.Builder
			for k, p := range dead {
				if p.AllowedIPs[0].Addr().As4()[2] == 1 {
					delete(dead, k) // 10.255.1.0/24 is b's
					continue
				}
				cfg.WriteString("public_key=" + hexKey(k) + "\nallowed_ip=" + p.AllowedIPs[0].String() + "\n")
			}
			live.AllowedIPs[0] = netip.MustParsePrefix("10.255.1.0/24")
			all := map[wgtypes.Key]Peer{live.PublicKey: live}
			for k, p := range dead {
				all[k] = p
			}
			if err := a.dev.IpcSet("public_key=" + hexKey(live.PublicKey) + "\nendpoint=127.0.0.1:" + b.port(t) + "\nallowed_ip=10.255.1.0/24\n" + cfg.String()); err != nil {
				t.Fatal(err)
			}
			if err := b.dev.IpcSet("public_key=" + hexKey(a.key.PublicKey()) + "\nendpoint=127.0.0.1:" + a.port(t) + "\nallowed_ip=10.255.0.0/24\n"); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			defer close(stop)
			var g *stageGate
			if gated {
				g = newStageGate()
				g.setPeers(all)
				a.wrap.gate.Store(g)
				go g.poll(a.dev, slog.New(slog.DiscardHandler), stop)
			}
			src := netip.MustParseAddr("10.255.0.2")
			ping := func(id byte) bool {
				p := tuntest.Ping(netip.MustParseAddr("10.255.1.7"), src)
				p[len(p)-1] = id
				if !a.send(p, 5*time.Second) {
					return false
				}
				for deadline := time.After(5 * time.Second); ; {
					select {
					case got := <-b.tun.Inbound:
						if got[len(got)-1] == id {
							return true
						}
					case <-deadline:
						return false
					}
				}
			}
			if !ping(1) {
				t.Fatal("no ping from a to b before the flood")
			}
			if gated {
				// The poller learns the session from the device
				// (Peer.LastHandshakeNano), not from the packet.
				g.mu.Lock()
				pg := g.peers[live.PublicKey]
				g.mu.Unlock()
				for deadline := time.Now().Add(5 * time.Second); pg.noSession.Load(); {
					if time.Now().After(deadline) {
						t.Fatal("the gate did not see the live peer's session within 5 s")
					}
					time.Sleep(10 * time.Millisecond) // polling, with a deadline
				}
			}
			// A stalled reader shows as a send not taken in time: half a
			// second where it must stall, two where it must not (a busy
			// CI host may pause the reader for a while).
			stuck, wait := 0, 500*time.Millisecond
			if gated {
				wait = 2 * time.Second
			}
			for _, p := range dead {
				dst := p.AllowedIPs[0].Addr().Next()
				for range 200 {
					if !a.send(tuntest.Ping(dst, src), wait) {
						stuck++
						break
					}
				}
			}
			if !gated {
				// Without the gate the scenario must stall a's reader, or
				// this test shows nothing. Removing the dead peers frees
				// their staged buffers, so that the device can close.
				if stuck == 0 {
					t.Fatal("the ungated device kept reading: the scenario does not exhaust the buffers")
				}
				var rm strings.Builder
				for k := range dead {
					rm.WriteString("public_key=" + hexKey(k) + "\nremove=true\n")
				}
				if err := a.dev.IpcSet(rm.String()); err != nil {
					t.Fatal(err)
				}
				return
			}
			if stuck != 0 {
				t.Fatalf("a's TUN reader stopped taking packets (%d peers' floods stuck)", stuck)
			}
			if !ping(2) {
				t.Fatal("no ping from a to b after the flood")
			}
			if n := a.wrap.Stats().DroppedNoSession.Load(); n < uint64(len(dead)*200-stageMaxTotal) {
				t.Errorf("DroppedNoSession = %d", n)
			}
		})
	}
}

// TestStartDeviceGate: the device's TUN reader judges packets from the
// moment startDevice releases it, and the gate startDevice hands the
// wrapper must reach it safely. The packets come from a goroutine that does
// not synchronise with startDevice (as the kernel's do not), so go test
// -race fails if the handoff is a plain write after the reader's release.
func TestStartDeviceGate(t *testing.T) {
	tt := tuntest.NewChannelTUN()
	o := &Overlay{log: slog.New(slog.DiscardHandler), stop: make(chan struct{})}
	o.wrap = NewWrapper(tt.TUN(), OpenFilter{})
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for range 64 {
			select {
			case tt.Outbound <- tuntest.Ping(netip.MustParseAddr("10.255.1.7"), netip.MustParseAddr("10.255.0.2")):
			case <-time.After(10 * time.Second):
				return // the test below fails
			}
		}
	}()
	binds := bindtest.NewChannelBinds()
	if got := o.startDevice(binds[0], minMessageBuffers, device.Options{}); got != minMessageBuffers {
		t.Fatalf("startDevice = %d message buffers, want %d", got, minMessageBuffers)
	}
	defer func() {
		close(o.stop)
		o.dev.Close()
		o.bufs.close()
	}()
	<-fed
	if o.wrap.gate.Load() != o.gate || o.gate == nil {
		t.Fatal("the wrapper has not the overlay's gate")
	}
	// The reader took the last packet; it counts it when its batch is done.
	for deadline := time.Now().Add(10 * time.Second); o.wrap.Stats().PassedToPeers.Load() < 64; {
		if time.Now().After(deadline) {
			t.Fatalf("the TUN reader passed %d packets of 64", o.wrap.Stats().PassedToPeers.Load())
		}
		time.Sleep(time.Millisecond) // polling, with a deadline
	}
}
