package overlay

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Staging limits: see stageGate.
const (
	stageMaxPerPeer = 16               // packets a peer without a session may hold
	stageMaxTotal   = 128              // the same, summed over all peers
	stageFlushAfter = 10 * time.Second // then its staged packets are dropped
	sessionLifetime = device.RejectAfterTime
	gatePollBusy    = 100 * time.Millisecond // while some peer has no session
	gatePollIdle    = time.Second
)

// stageGate keeps peers without a WireGuard session from holding the
// bounded message buffers (bufpool.go).
//
// wireguard-go stages the packets for a peer that has no session (no
// handshake yet, or its peer is unreachable) until a handshake completes,
// gives up after 90 s, or the peer is removed: up to 128 batches, each
// holding at least one 64 KiB buffer. With the pool bounded, three such
// peers hold every spare buffer, and the TUN reader then waits for a
// buffer — for all peers, the reachable ones too. So the wrapper lets at
// most stageMaxPerPeer packets (stageMaxTotal over all peers) through to a
// peer without a session and drops the rest (WrapperStats.DroppedNoSession);
// a peer whose packets have waited stageFlushAfter gets them dropped
// (Peer.ZeroAndFlushAll, which also restarts its handshake state). The
// count of a peer starts again when it has a session. The handshake itself
// does not need the packets: the first staged one starts it, and weft's
// keepalives keep sessions up between live cells, so the gate only ever
// drops packets for a cell that is unreachable or just appeared.
//
// Sessions are read from the device (Peer.LastHandshakeNano younger than
// RejectAfterTime) by a poller, every 100 ms while some peer has none and
// every second otherwise; with every session up the packet path only loads
// one atomic flag.
type stageGate struct {
	active atomic.Bool // some peer has no session
	table  atomic.Pointer[gateTable]
	total  atomic.Int32
	now    func() int64 // unix nanoseconds

	mu    sync.Mutex
	peers map[wgtypes.Key]*peerGate // guarded by mu
}

// peerGate is the staging state of one peer.
type peerGate struct {
	key       wgtypes.Key
	noSession atomic.Bool
	staged    atomic.Int32 // packets let through while without a session
	since     atomic.Int64 // when the first of them went through (unix ns)
}

// gateTable maps destination prefixes to peers; immutable once published.
type gateTable struct {
	bits   []int // distinct prefix lengths of IPv4 allowed IPs, longest first
	byNet4 map[netip.Prefix]*peerGate
}

func newStageGate() *stageGate {
	g := &stageGate{peers: make(map[wgtypes.Key]*peerGate), now: func() int64 { return time.Now().UnixNano() }}
	g.table.Store(&gateTable{})
	return g
}

// allow reports whether an IPv4 packet for a peer may go to wireguard-go.
// It is called by the TUN reader for every accepted packet.
func (g *stageGate) allow(pkt []byte) bool {
	if !g.active.Load() || len(pkt) < 20 || pkt[0]>>4 != 4 {
		return true
	}
	pg := g.table.Load().lookup(netip.AddrFrom4([4]byte(pkt[16:20])))
	if pg == nil || !pg.noSession.Load() {
		return true
	}
	if n := pg.staged.Add(1); n > stageMaxPerPeer {
		pg.staged.Add(-1)
		return false
	} else if n == 1 {
		pg.since.Store(g.now())
	}
	if g.total.Add(1) > stageMaxTotal {
		g.total.Add(-1)
		pg.staged.Add(-1)
		return false
	}
	return true
}

func (t *gateTable) lookup(a netip.Addr) *peerGate {
	for _, b := range t.bits {
		if pg := t.byNet4[netip.PrefixFrom(a, b).Masked()]; pg != nil {
			return pg
		}
	}
	return nil
}

// setPeers makes the gate's peers those of want; a new peer starts
// without a session. A removed peer's staged packets are freed by
// wireguard-go, so its count is released.
func (g *stageGate) setPeers(want map[wgtypes.Key]Peer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, pg := range g.peers {
		if _, ok := want[k]; !ok {
			g.total.Add(-pg.staged.Swap(0))
			delete(g.peers, k)
		}
	}
	t := &gateTable{byNet4: make(map[netip.Prefix]*peerGate)}
	seen := map[int]bool{}
	for k, p := range want {
		pg := g.peers[k]
		if pg == nil {
			pg = &peerGate{key: k}
			pg.noSession.Store(true)
			g.peers[k] = pg
		}
		for _, a := range p.AllowedIPs {
			if a.Addr().Is4() {
				t.byNet4[a.Masked()] = pg
				seen[a.Bits()] = true
			}
		}
	}
	for b := 32; b >= 0; b-- {
		if seen[b] {
			t.bits = append(t.bits, b)
		}
	}
	g.table.Store(t)
	g.refreshActiveLocked()
}

func (g *stageGate) refreshActiveLocked() {
	active := false
	for _, pg := range g.peers {
		active = active || pg.noSession.Load()
	}
	g.active.Store(active)
}

// update records which peers have a session (lastHandshake: the last
// handshake of a peer, unix ns, 0 for never) and drops the packets peers
// without one have held for longer than stageFlushAfter (flush). It
// returns whether some peer has no session.
func (g *stageGate) update(lastHandshake func(wgtypes.Key) int64, flush func(wgtypes.Key)) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	for k, pg := range g.peers {
		hs := lastHandshake(k)
		if hs != 0 && now-hs < int64(sessionLifetime) {
			pg.noSession.Store(false)
			g.total.Add(-pg.staged.Swap(0)) // sent when the session came up
			continue
		}
		pg.noSession.Store(true)
		if pg.staged.Load() > 0 && now-pg.since.Load() > int64(stageFlushAfter) {
			flush(k)
			g.total.Add(-pg.staged.Swap(0))
		}
	}
	g.refreshActiveLocked()
	return g.active.Load()
}

// poll feeds the gate from dev until stop is closed.
func (g *stageGate) poll(dev *device.Device, log *slog.Logger, stop <-chan struct{}) {
	flush := func(k wgtypes.Key) {
		if p := dev.LookupPeer(device.NoisePublicKey(k)); p != nil {
			p.ZeroAndFlushAll()
		}
		log.Debug("dropped the packets staged for a peer without a WireGuard session", "key", k.String())
	}
	// The device's own record of each peer (a patch of weft's copy,
	// WEFT-PATCHES.md "Session state"), not UAPI text.
	lastHandshake := func(k wgtypes.Key) int64 {
		if p := dev.LookupPeer(device.NoisePublicKey(k)); p != nil {
			return p.LastHandshakeNano()
		}
		return 0
	}
	t := time.NewTimer(gatePollBusy)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		interval := gatePollBusy
		if !g.update(lastHandshake, flush) {
			interval = gatePollIdle
		}
		t.Reset(interval)
	}
}
