package mesh

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// netSplit is an in-process network partition: packets and streams between
// transports on different sides are lost, as on a split underlay (a dial
// hangs until its timeout).
type netSplit struct {
	mu   sync.Mutex
	side map[string]int // transport address -> side (0 unless set)
}

func (s *netSplit) set(addr string, side int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.side[addr] = side
}

func (s *netSplit) cut(a, b string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.side[a] != s.side[b]
}

// splitTransport is memberlist's UDP+TCP transport on 127.0.0.1 whose
// sends across the split are lost. Only sends are filtered: every node of
// the test uses one, so nothing crosses either way. It embeds the
// Transport interface, not *NetTransport, whose WriteToAddress and
// DialAddressTimeout memberlist would call instead of these.
type splitTransport struct {
	memberlist.Transport
	split *netSplit
	addr  string
	done  chan struct{}
	once  sync.Once
}

func newSplitTransport(t *testing.T, split *netSplit) *splitTransport {
	t.Helper()
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		Logger:    log.New(io.Discard, "", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &splitTransport{Transport: nt, split: split, done: make(chan struct{}),
		addr: fmt.Sprintf("127.0.0.1:%d", nt.GetAutoBindPort())}
}

func (t *splitTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.split.cut(t.addr, addr) {
		return time.Now(), nil // lost on the way
	}
	return t.Transport.WriteTo(b, addr)
}

func (t *splitTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.split.cut(t.addr, addr) {
		select {
		case <-time.After(timeout):
		case <-t.done:
		}
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: fmt.Errorf("i/o timeout (split)")}
	}
	return t.Transport.DialTimeout(addr, timeout)
}

func (t *splitTransport) Shutdown() error {
	t.once.Do(func() { close(t.done) })
	return t.Transport.Shutdown()
}

// timedCapture records each log message with its time; safe for
// concurrent use.
type timedCapture struct {
	mu   sync.Mutex
	recs []timedRec
}

type timedRec struct {
	at  time.Time
	msg string
}

func (h *timedCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h *timedCapture) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, timedRec{r.Time, r.Message})
	return nil
}
func (h *timedCapture) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *timedCapture) WithGroup(string) slog.Handler      { return h }

// first returns the time of the first message containing s.
func (h *timedCapture) first(s string) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if strings.Contains(r.msg, s) {
			return r.at, true
		}
	}
	return time.Time{}, false
}

// count returns how many messages contain s.
func (h *timedCapture) count(s string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := 0
	for _, r := range h.recs {
		if strings.Contains(r.msg, s) {
			c++
		}
	}
	return c
}

// TestIsolatedCellDeclaresOthersDead (issue 28): a cell cut off alone from
// a cluster of 3, 5 or 10 declares all the others dead in under 10 s, as
// they declare it dead, the others never suspect each other, and all see
// each other alive again once healed. The isolated cell's own memberlist
// suspicions last the suspicion time (3 s, 6 s with memberlist's
// SuspicionMaxTimeoutMult). memberlist alone suspects one peer
// per probe, in turn: 6.6 s among 3, 10.6 s among 5, 20.6 s among 10;
// isolation.go declares them all at once.
func TestIsolatedCellDeclaresOthersDead(t *testing.T) {
	for _, n := range []int{3, 5, 10} {
		t.Run(fmt.Sprintf("%d cells", n), func(t *testing.T) { testIsolatedCell(t, n) })
	}
}

func testIsolatedCell(t *testing.T, n int) {
	split := &netSplit{side: map[string]int{}}
	var ms []*Mesh
	var tr []*splitTransport
	logs := make([]*timedCapture, n)
	for i := range n {
		st := newSplitTransport(t, split)
		tr = append(tr, st)
		logs[i] = &timedCapture{}
		o := nodeOpts{mutate: func(c *Config) { c.Transport = st }, logger: slog.New(logs[i])}
		if i > 0 {
			o.join = ms[0].joinAddr()
		}
		ms = append(ms, startNode(t, fmt.Sprintf("cell-%d", i), o))
	}
	waitMembers(t, ms, n)

	iso := n - 1
	isoName := fmt.Sprintf("cell-%d", iso)
	var majority []string
	for i := range iso {
		majority = append(majority, fmt.Sprintf("cell-%d", i))
	}
	split.set(tr[iso].addr, 1)
	cut := time.Now()
	deadAt := func(m *Mesh, names ...string) time.Duration {
		for {
			dead := 0
			for _, nd := range m.Members() {
				if nd.State == NodeDead && slices.Contains(names, nd.Name) {
					dead++
				}
			}
			if dead == len(names) {
				return time.Since(cut)
			}
			if time.Since(cut) > 30*time.Second {
				return -1
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	took := make([]time.Duration, n)
	for i := range n {
		if i == iso {
			wg.Go(func() { took[i] = deadAt(ms[i], majority...) })
		} else {
			wg.Go(func() { took[i] = deadAt(ms[i], isoName) })
		}
	}
	wg.Wait()
	var maj []time.Duration
	for i := range iso {
		maj = append(maj, took[i].Round(time.Millisecond))
	}
	t.Logf("%d cells: the isolated cell declared the %d others dead after %v; the others declared it dead after %v",
		n, iso, took[iso].Round(time.Millisecond), maj)
	for i, d := range took {
		if d < 0 || d >= 10*time.Second {
			t.Errorf("cell-%d: detection took %v (-1: over 30 s), want < 10 s", i, d)
		}
	}
	// The majority never suspects one of its own (memberlist logs each
	// suspicion it raises or learns of: "Suspect X has failed").
	for i := range iso {
		for _, peer := range majority {
			if at, ok := logs[i].first("Suspect " + peer + " has failed"); ok {
				t.Errorf("majority side flapped: cell-%d suspected %s %v after the cut", i, peer, at.Sub(cut).Round(time.Millisecond))
			}
		}
	}
	// memberlist's own suspicions of the isolated cell, confirmed by no
	// one, must last the suspicion time, not SuspicionMaxTimeoutMult times
	// that (6 s at memberlist's 2): check those it has run out by now.
	want, timed := suspicionTimeout(ms[iso].cfg.ProbeInterval, n), 0
	for _, peer := range majority {
		suspected, ok1 := logs[iso].first("Suspect " + peer + " has failed")
		failed, ok2 := logs[iso].first("Marking " + peer + " as failed")
		if !ok1 || !ok2 {
			continue
		}
		timed++
		if d := failed.Sub(suspected); d > want+500*time.Millisecond {
			t.Errorf("isolated cell: the unconfirmed suspicion of %s lasted %v, want the suspicion time %v", peer, d, want)
		}
	}
	if timed == 0 {
		t.Errorf("isolated cell: memberlist declared no peer dead yet, nothing to time")
	}
	if at, ok := logs[iso].first("ISOLATED"); ok {
		t.Logf("isolated cell: ISOLATED logged %v after the cut", at.Sub(cut).Round(time.Millisecond))
	} else {
		t.Errorf("the isolated cell did not log ISOLATED")
	}
	for i := range iso {
		if _, ok := logs[i].first("ISOLATED"); ok {
			t.Errorf("cell-%d, on the majority side, logged ISOLATED", i)
		}
	}

	// Healed, every cell sees every other alive again.
	split.set(tr[iso].addr, 0)
	healed := time.Now()
	eventually(t, 20*time.Second, "healed", func() error {
		for _, m := range ms {
			for _, nd := range m.Members() {
				if nd.State != NodeAlive {
					return fmt.Errorf("%s sees %s %v", m.cfg.Name, nd.Name, nd.State)
				}
			}
		}
		return nil
	})
	t.Logf("healed: every cell sees the %d others alive after %v", n-1, time.Since(healed).Round(time.Millisecond))
}

// TestNoFlapUnderCPULoad: a healthy cluster of 10 whose process is
// saturated (4 busy goroutines per CPU for 10 s, besides the cells' own
// work; run it with -race for more) declares nobody dead and no cell
// isolated. The suspicions memberlist raised (each refuted) and the
// isolation sweeps are logged as figures: with 500 ms probes (and
// suspicion kept at 3 s) this load raised 33-56 suspicions and a cell was
// declared dead within 5 s; with 1 s probes, 0-3 and none.
func TestNoFlapUnderCPULoad(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s of CPU load")
	}
	const n = 10
	var ms []*Mesh
	logs := make([]*timedCapture, n)
	for i := range n {
		logs[i] = &timedCapture{}
		o := nodeOpts{logger: slog.New(logs[i])}
		if i > 0 {
			o.join = ms[0].joinAddr()
		}
		ms = append(ms, startNode(t, fmt.Sprintf("cell-%d", i), o))
	}
	waitMembers(t, ms, n)

	start := time.Now()
	stop := time.After(10 * time.Second)
	var spin atomic.Bool
	spin.Store(true)
	var busy sync.WaitGroup
	for range 4 * runtime.GOMAXPROCS(0) {
		busy.Go(func() {
			x := 0
			for spin.Load() {
				x++
			}
			_ = x
		})
	}
	var dead []string
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
watch:
	for {
		select {
		case <-stop:
			break watch
		case <-tick.C:
		}
		for _, m := range ms {
			for _, nd := range m.Members() {
				if nd.State != NodeAlive {
					dead = append(dead, fmt.Sprintf("%s saw %s %v after %v", m.cfg.Name, nd.Name, nd.State, time.Since(start).Round(time.Millisecond)))
				}
			}
		}
		if len(dead) > 0 {
			break
		}
	}
	spin.Store(false)
	busy.Wait()
	suspicions, sweeps := 0, uint64(0)
	for i, l := range logs {
		suspicions += l.count("has failed, no acks received")
		sweeps += ms[i].sweeps.Load()
		if _, ok := l.first("ISOLATED"); ok {
			t.Errorf("cell-%d logged ISOLATED", i)
		}
	}
	t.Logf("10 cells under CPU load for %v: %d suspicions raised (all refuted unless listed below), %d isolation sweeps", time.Since(start).Round(time.Second), suspicions, sweeps)
	for _, d := range dead {
		t.Errorf("flapped: %s", d)
	}
}

// TestLostGossipRepaired: when the gossip of a join is lost to a cell
// (here: cell-0 ignores every alive message about cell-2 for 3 s, long
// after memberlist's bounded retransmissions have run out), the cell learns
// of the joiner within a probe round, not at the next periodic push/pull
// (set to 10 minutes, so that only the probes' view digests, views.go, can
// bring it). A partition that heals after a cell joined one side loses
// gossip this way: seen in e2e TestSubnetConflict, one cell missing
// another 30 s after the heal.
func TestLostGossipRepaired(t *testing.T) {
	var deaf atomic.Bool
	deaf.Store(true)
	slow := func(c *Config) { c.PushPullInterval = 10 * time.Minute }
	a := startNode(t, "cell-0", nodeOpts{mutate: func(c *Config) {
		slow(c)
		c.ignoreAlive = func(node string) bool { return node == "cell-2" && deaf.Load() }
	}})
	b := startNode(t, "cell-1", nodeOpts{join: a.joinAddr(), mutate: slow})
	waitMembers(t, []*Mesh{a, b}, 2)
	c := startNode(t, "cell-2", nodeOpts{join: b.joinAddr(), mutate: slow})
	alive := func(m *Mesh, name string) bool {
		for _, nd := range m.Members() {
			if nd.Name == name {
				return nd.State == NodeAlive
			}
		}
		return false
	}
	eventually(t, 5*time.Second, "cell-1 sees cell-2", func() error {
		if !alive(b, "cell-2") || !alive(c, "cell-0") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	time.Sleep(3 * time.Second)
	if alive(a, "cell-2") {
		t.Fatalf("cell-0 learned of cell-2 while ignoring it")
	}
	deaf.Store(false)
	heard := time.Now()
	eventually(t, 20*time.Second, "cell-0 learns of cell-2", func() error {
		if !alive(a, "cell-2") {
			return fmt.Errorf("cell-0 does not see cell-2")
		}
		return nil
	})
	t.Logf("cell-0 learned of cell-2 %v after it stopped ignoring it; push/pulls for differing views: %d",
		time.Since(heard).Round(time.Millisecond), a.viewPulls.Load()+b.viewPulls.Load()+c.viewPulls.Load())
	// Converged, the digests agree: no further push/pulls. a seeing
	// cell-2 is not yet that: another cell's view may still be moving
	// (a slow probe on a loaded CI machine; one more push/pull seen), so
	// first all three digests must agree.
	digest := func(m *Mesh) uint64 {
		m.viewMu.Lock()
		defer m.viewMu.Unlock()
		return m.view.digest
	}
	eventually(t, 10*time.Second, "the three views agree", func() error {
		if da, db, dc := digest(a), digest(b), digest(c); da != db || db != dc {
			return fmt.Errorf("view digests %x %x %x", da, db, dc)
		}
		return nil
	})
	before := a.viewPulls.Load() + b.viewPulls.Load() + c.viewPulls.Load()
	time.Sleep(4 * time.Second)
	if after := a.viewPulls.Load() + b.viewPulls.Load() + c.viewPulls.Load(); after != before {
		t.Errorf("a converged cluster ran %d more push/pulls for differing views", after-before)
	}
}
