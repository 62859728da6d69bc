package mesh

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// The mesh's own goroutines: notifyLoop (listener calls), maintainLoop
// (lease, persistence of remote changes, pruning) and joinLoop.

// announceLeave gossips that this cell is leaving (so peers report it as
// left, not dead) and waits until the message has been sent.
func (m *Mesh) announceLeave() {
	if m.numAlive.Load() <= 1 {
		return
	}
	m.mu.Lock()
	l := leaveMsg{Node: m.cfg.Name, Seq: m.st.nextSeq()}
	m.mu.Unlock()
	b := leaveBroadcast(l)
	b.done = make(chan struct{})
	m.queue.QueueBroadcast(b)
	t := time.NewTimer(leaveTimeout)
	defer t.Stop()
	select {
	case <-b.done:
	case <-t.C:
		m.log.Warn("leave announcement not sent in time")
	}
}

// kill stops memberlist without leaving, as a crash would (tests).
func (m *Mesh) kill() {
	m.mlDown.Store(true)
	_ = m.ml.Shutdown()
}

func (m *Mesh) kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (m *Mesh) signal(flag *atomic.Bool) {
	flag.Store(true)
	m.kick(m.kickNotify)
}

// notifyLoop calls the listener outside all locks.
func (m *Mesh) notifyLoop() {
	defer m.wg.Done()
	for {
		select {
		case <-m.done:
			return
		case <-m.kickNotify:
		}
		if m.l == nil {
			continue
		}
		if m.notifyMembers.Swap(false) {
			m.l.MembersChanged()
		}
		if m.notifyState.Swap(false) {
			m.l.StateChanged()
		}
	}
}

// maintainLoop takes and defends the lease, writes state.json after remote
// changes and prunes tombstones.
func (m *Mesh) maintainLoop() {
	defer m.wg.Done()
	tick := time.NewTicker(housekeepPeriod)
	defer tick.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-m.kickLease:
			m.checkLease()
		case <-m.kickPersist:
			if err := m.persistState(); err != nil {
				m.log.Error("persisting state failed", "err", err)
			}
		case <-tick.C:
			m.mu.Lock()
			m.st.prune(time.Now().Add(-tombstoneTTL))
			m.mu.Unlock()
			m.checkLease() // retries after exhaustion
		}
	}
}

// joinLoop joins the seeds with exponential backoff until it succeeds, the
// cell is joined by a peer or the mesh shuts down.
func (m *Mesh) joinLoop() {
	delay := time.Second
	seeds := strings.Join(m.cfg.Join, ",")
	for {
		select {
		case <-m.done:
			return
		case <-m.joinedCh:
			return
		default:
		}
		n, err := m.ml.Join(m.cfg.Join)
		if n > 0 {
			m.log.Info("joined cluster", "seeds", seeds, "contacted", n)
			m.setJoined()
			return
		}
		if m.mlDown.Load() {
			return
		}
		m.log.Warn(fmt.Sprintf("join %s failed: %v; retrying in %s", seeds, oneLine(err), delay),
			"addr", seeds, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-m.done:
			t.Stop()
			return
		case <-m.joinedCh:
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, m.cfg.JoinRetryMax)
	}
}

func oneLine(err error) string {
	if err == nil {
		return "no node contacted"
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

func (m *Mesh) setJoined() {
	m.mu.Lock()
	first := !m.joined
	m.joined = true
	m.mu.Unlock()
	if first {
		close(m.joinedCh)
		m.kick(m.kickLease)
	}
}

func addrFromIP(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
