package mesh

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
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

// TestIsolatedCellDeclaresOthersDead (issue 28): a cell cut off alone from
// a cluster of three declares the two others dead in under 10 s, as the
// two declare it dead, and the two never doubt each other. The isolated
// cell's suspicions get no confirmation: each must last SuspicionMult ×
// ProbeInterval (3 s), not SuspicionMaxTimeoutMult times that (memberlist
// logs when it suspects a peer and when the suspicion runs out). Its
// probes, stretched by memberlist's awareness, suspect the second peer at
// most 1 + 2 + 2 s after the cut (one peer probed twice first), so it is
// done within 9 s; with memberlist's defaults it took 9-12 s.
func TestIsolatedCellDeclaresOthersDead(t *testing.T) {
	split := &netSplit{side: map[string]int{}}
	var ms []*Mesh
	var tr []*splitTransport
	isolatedLog := &timedCapture{}
	for i := range 3 {
		st := newSplitTransport(t, split)
		tr = append(tr, st)
		o := nodeOpts{mutate: func(c *Config) { c.Transport = st }}
		if i == 2 {
			o.logger = slog.New(isolatedLog)
		}
		if i > 0 {
			o.join = ms[0].joinAddr()
		}
		ms = append(ms, startNode(t, fmt.Sprintf("cell-%d", i), o))
	}
	waitMembers(t, ms, 3)

	split.set(tr[2].addr, 1)
	cut := time.Now()
	deadAt := func(m *Mesh, names ...string) time.Duration {
		for {
			dead := 0
			for _, n := range m.Members() {
				for _, want := range names {
					if n.Name == want && n.State == NodeDead {
						dead++
					}
				}
			}
			if dead == len(names) {
				return time.Since(cut)
			}
			if time.Since(cut) > 20*time.Second {
				return -1
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	took := make([]time.Duration, 3)
	wg.Go(func() { took[2] = deadAt(ms[2], "cell-0", "cell-1") })
	wg.Go(func() { took[0] = deadAt(ms[0], "cell-2") })
	wg.Go(func() { took[1] = deadAt(ms[1], "cell-2") })
	flapped := make(chan string, 2)
	stop := make(chan struct{})
	var watch sync.WaitGroup
	for i, other := range []string{"cell-1", "cell-0"} {
		watch.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				for _, n := range ms[i].Members() {
					if n.Name == other && n.State != NodeAlive {
						flapped <- fmt.Sprintf("cell-%d saw %s %v", i, other, n.State)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	watch.Wait()
	close(flapped)
	for f := range flapped {
		t.Errorf("majority side flapped: %s", f)
	}
	t.Logf("declared dead after: isolated cell-2 (both others) %v; cell-0 %v, cell-1 %v (cell-2)", took[2], took[0], took[1])
	for i, d := range took {
		if d < 0 || d >= 10*time.Second {
			t.Errorf("cell-%d: detection took %v (-1: over 20 s), want < 10 s", i, d)
		}
	}
	for _, peer := range []string{"cell-0", "cell-1"} {
		suspected, ok1 := isolatedLog.first("Suspect " + peer + " has failed")
		failed, ok2 := isolatedLog.first("Marking " + peer + " as failed")
		if !ok1 || !ok2 {
			t.Errorf("isolated cell's log lacks the suspicion or the death of %s", peer)
			continue
		}
		d := failed.Sub(suspected)
		t.Logf("isolated cell: %s suspected %v after the cut, dead %v later", peer, suspected.Sub(cut).Round(time.Millisecond), d.Round(time.Millisecond))
		if d > 3500*time.Millisecond {
			t.Errorf("isolated cell: the unconfirmed suspicion of %s lasted %v, want SuspicionMult × ProbeInterval = 3 s", peer, d)
		}
	}
}
