package cell

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/weft-net/weft/overlay"
)

// Path MTU discovery (docs/architecture.md, "Path MTU"), in the manner of
// DPLPMTUD (RFC 8899): the agent sends padded UDP datagrams from its own
// overlay address to each peer cell's, through the tunnel, with DF set; the
// peer's agent answers each with a small datagram naming the size it got.
// A size that is answered fits the underlay with WireGuard's overhead. The
// largest such size, searched between overlay.MinPathMTU and the overlay
// MTU, becomes the MTU of the route to the peer's subnet
// (overlay.SetPeerMTU). Each peer is probed when it appears or its
// endpoint changes, confirmed every pmtuTiming.Confirm with one probe of
// the current size, and searched again when that fails, when the kernel
// learned a smaller path MTU for its endpoint from ICMP, and every
// pmtuTiming.Search while it is below the overlay MTU (the path may have
// grown). In steady state that is one datagram each way per peer and
// Confirm.

// Path MTU states, as status shows them.
const (
	pmtuProbing = "probing"  // the first search is under way
	pmtuOK      = "ok"       // the overlay MTU fits
	pmtuReduced = "reduced"  // a smaller MTU than the overlay's fits: the peer's route has it
	pmtuNoReply = "no_reply" // not even MinPathMTU was answered (peer down, or an older weft)
)

// pmtuTiming paces the probes.
type pmtuTiming struct {
	Confirm time.Duration // between confirmations of the current size
	Search  time.Duration // between searches for a larger size while reduced
	Timeout time.Duration // wait for one answer
	Tries   int           // probes of one size before it counts as lost
}

func defaultPMTUTiming() pmtuTiming {
	return pmtuTiming{Confirm: 10 * time.Second, Search: 10 * time.Minute, Timeout: 400 * time.Millisecond, Tries: 3}
}

// Probe datagrams: magic, kind, nonce, and in an answer the size received.
var pmtuMagic = []byte("WFTP")

const (
	pmtuRequest = 1
	pmtuAnswer  = 2
	pmtuHeader  = 4 + 1 + 8 // magic, kind, nonce
	ipUDPHeader = 20 + 8    // what the kernel adds to a probe's payload
)

// pmtuTarget is a peer cell to probe.
type pmtuTarget struct {
	Name     string
	Key      string // WireGuard public key
	Subnet   netip.Prefix
	Endpoint netip.AddrPort // underlay
}

// PeerPathMTU is what status, trace and metrics show of one peer.
type PeerPathMTU struct {
	MTU    int // largest inner packet that reaches the peer; 0 while unknown
	State  string
	Probed time.Time // end of the last search or confirmation
}

// pmtuProber runs one goroutine per peer and one that reads the probe
// socket (answering probes, passing answers on). Its methods are safe for
// concurrent use.
type pmtuProber struct {
	log    *slog.Logger
	ov     *overlay.Overlay
	conn   *net.UDPConn
	max    int // the overlay MTU
	timing pmtuTiming

	mu      sync.Mutex
	peers   map[string]*pmtuPeer     // guarded by mu; by public key
	waits   map[uint64]chan<- int    // guarded by mu; answers awaited, by nonce
	calls   map[uint64]chan<- []byte // guarded by mu; cell-to-cell answers awaited (cellrpc.go)
	serveFn func([]byte) []byte      // answers cell-to-cell requests (cellrpc.go); nil: none
	callSem chan struct{}            // bounds the requests answered at once
	nonce   uint64                   // guarded by mu
	stopped bool                     // guarded by mu
	wg      sync.WaitGroup
}

type pmtuPeer struct {
	target pmtuTarget
	cancel context.CancelFunc
	PeerPathMTU
}

// startPMTU opens the probe socket on ov's cell address and starts
// answering probes.
// serveFn, if not nil, answers cell-to-cell requests on the same socket
// (cellrpc.go).
func startPMTU(ov *overlay.Overlay, log *slog.Logger, timing pmtuTiming, serveFn func([]byte) []byte) (*pmtuProber, error) {
	conn, err := ov.ListenProbes()
	if err != nil {
		return nil, err
	}
	p := &pmtuProber{
		log:     log.With("component", "pmtu"),
		ov:      ov,
		conn:    conn,
		max:     ov.Config().MTU,
		timing:  timing,
		peers:   map[string]*pmtuPeer{},
		waits:   map[uint64]chan<- int{},
		calls:   map[uint64]chan<- []byte{},
		serveFn: serveFn,
		callSem: make(chan struct{}, maxCellCalls),
	}
	p.wg.Go(p.serve)
	return p, nil
}

// Sync makes the probed peers equal to want: a new peer, or one whose
// subnet or endpoint changed, is searched from scratch; a peer that is
// gone loses its route MTU.
func (p *pmtuProber) Sync(want []pmtuTarget) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	seen := map[string]bool{}
	for _, t := range want {
		seen[t.Key] = true
		if old, ok := p.peers[t.Key]; ok {
			if old.target == t {
				continue
			}
			p.dropLocked(old)
		}
		ctx, cancel := context.WithCancel(context.Background())
		pp := &pmtuPeer{target: t, cancel: cancel, PeerPathMTU: PeerPathMTU{State: pmtuProbing}}
		p.peers[t.Key] = pp
		p.wg.Go(func() { p.run(ctx, pp) })
	}
	for k, pp := range p.peers {
		if !seen[k] {
			p.dropLocked(pp)
		}
	}
}

// dropLocked stops probing pp and removes its route MTU.
func (p *pmtuProber) dropLocked(pp *pmtuPeer) {
	pp.cancel()
	delete(p.peers, pp.target.Key)
	if err := p.ov.SetPeerMTU(pp.target.Subnet, 0); err != nil {
		p.log.Warn("remove path MTU route", "peer", pp.target.Name, "err", err)
	}
}

// Get returns the path MTU to the peer with public key key.
func (p *pmtuProber) Get(key string) (PeerPathMTU, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pp, ok := p.peers[key]
	if !ok {
		return PeerPathMTU{}, false
	}
	return pp.PeerPathMTU, true
}

// ByName returns the path MTU to the peer cell named name.
func (p *pmtuProber) ByName(name string) (PeerPathMTU, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pp := range p.peers {
		if pp.target.Name == name {
			return pp.PeerPathMTU, true
		}
	}
	return PeerPathMTU{}, false
}

// Close stops every probe and the socket. Routes stay: they go with the
// TUN device.
func (p *pmtuProber) Close() {
	p.mu.Lock()
	p.stopped = true
	for _, pp := range p.peers {
		pp.cancel()
	}
	p.mu.Unlock()
	p.conn.Close()
	p.wg.Wait()
}

// run probes one peer until ctx is cancelled.
func (p *pmtuProber) run(ctx context.Context, pp *pmtuPeer) {
	t := pp.target
	overhead := overlay.WireGuardOverhead(t.Endpoint.Addr())
	to := netip.AddrPortFrom(overlay.CellAddr(t.Subnet), overlay.PMTUProbePort)
	var mtu int
	var searched time.Time
	for {
		// What the kernel learned from ICMP, if anything, bounds the
		// search: larger probes would be fragmented on the underlay and
		// answered.
		hi := p.max
		if k := overlay.KernelPathMTU(t.Endpoint.Addr()); k > 0 {
			hi = min(hi, k-overhead)
		}
		switch {
		case mtu == 0, mtu > hi, mtu < p.max && time.Since(searched) >= p.timing.Search, !p.try(ctx, to, mtu):
			mtu = p.search(ctx, to, max(hi, overlay.MinPathMTU))
			searched = time.Now()
		}
		if ctx.Err() != nil {
			return
		}
		p.set(pp, mtu)
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.timing.Confirm):
		}
	}
}

// search returns the largest size in [MinPathMTU, hi] that is answered,
// or 0 if none is.
func (p *pmtuProber) search(ctx context.Context, to netip.AddrPort, hi int) int {
	if p.try(ctx, to, hi) {
		return hi
	}
	lo := overlay.MinPathMTU
	if !p.try(ctx, to, lo) {
		return 0
	}
	// lo is answered, hi is not.
	for hi-lo > 1 && ctx.Err() == nil {
		mid := lo + (hi-lo)/2
		if p.try(ctx, to, mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

// set records mtu for pp and gives the peer's route that MTU (again: it
// repairs a route someone removed).
func (p *pmtuProber) set(pp *pmtuPeer, mtu int) {
	state := pmtuOK
	switch {
	case mtu == 0:
		state = pmtuNoReply
	case mtu < p.max:
		state = pmtuReduced
	}
	p.mu.Lock()
	if p.stopped || p.peers[pp.target.Key] != pp {
		p.mu.Unlock()
		return // dropped meanwhile: its route is gone and stays gone
	}
	old := pp.PeerPathMTU
	pp.MTU, pp.State, pp.Probed = mtu, state, time.Now()
	err := p.ov.SetPeerMTU(pp.target.Subnet, mtu)
	p.mu.Unlock()
	if err != nil {
		p.log.Warn("path MTU route", "peer", pp.target.Name, "err", err)
	}
	if old.MTU != mtu || old.State != state {
		lvl := slog.LevelInfo
		if state != pmtuOK {
			lvl = slog.LevelWarn
		}
		p.log.Log(context.Background(), lvl, "path MTU", "peer", pp.target.Name, "endpoint", pp.target.Endpoint,
			"mtu", mtu, "state", state, "overlay_mtu", p.max)
	}
}

// try sends probes of size bytes (the whole inner IP packet) to to, up to
// Tries times, and reports whether one was answered.
func (p *pmtuProber) try(ctx context.Context, to netip.AddrPort, size int) bool {
	if size < pmtuHeader+ipUDPHeader {
		return false
	}
	buf := make([]byte, size-ipUDPHeader)
	copy(buf, pmtuMagic)
	buf[4] = pmtuRequest
	for range p.timing.Tries {
		ch := make(chan int, 1)
		p.mu.Lock()
		p.nonce++
		nonce := p.nonce
		p.waits[nonce] = ch
		p.mu.Unlock()
		binary.BigEndian.PutUint64(buf[5:], nonce)
		_, err := p.conn.WriteToUDPAddrPort(buf, to)
		ok := false
		if err == nil {
			t := time.NewTimer(p.timing.Timeout)
			select {
			case got := <-ch:
				ok = got >= size
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		p.mu.Lock()
		delete(p.waits, nonce)
		p.mu.Unlock()
		if ok {
			return true
		}
		if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
			return false
		}
	}
	return false
}

// serve answers probes and hands answers to the waiting try, until the
// socket is closed. Only peer cells reach the socket: the wrapper lets
// nothing else through to this cell's address and port (overlay/probe.go).
func (p *pmtuProber) serve() {
	buf := make([]byte, 65536)
	ans := make([]byte, pmtuHeader+2)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if n < pmtuHeader || !bytes.Equal(buf[:4], pmtuMagic) {
			continue
		}
		switch buf[4] {
		case pmtuRequest:
			copy(ans, buf[:pmtuHeader])
			ans[4] = pmtuAnswer
			binary.BigEndian.PutUint16(ans[pmtuHeader:], uint16(min(n+ipUDPHeader, 65535)))
			p.conn.WriteToUDPAddrPort(ans, from)
		case pmtuAnswer:
			if n < pmtuHeader+2 {
				continue
			}
			nonce := binary.BigEndian.Uint64(buf[5:])
			p.mu.Lock()
			ch := p.waits[nonce]
			p.mu.Unlock()
			if ch != nil {
				select {
				case ch <- int(binary.BigEndian.Uint16(buf[pmtuHeader:])):
				default:
				}
			}
		case cellRequest, cellAnswer:
			p.handleCall(buf[4], binary.BigEndian.Uint64(buf[5:]), bytes.Clone(buf[pmtuHeader:n]), from)
		}
	}
}

// peerPathMTU returns the probed path MTU to the peer with public key key.
func (a *Agent) peerPathMTU(key string) (PeerPathMTU, bool) {
	a.mu.Lock()
	pm := a.pmtu
	a.mu.Unlock()
	if pm == nil {
		return PeerPathMTU{}, false
	}
	return pm.Get(key)
}
