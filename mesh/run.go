package mesh

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// The mesh's own goroutines: notifyLoop (listener calls), maintainLoop
// (lease, persistence of remote changes, pruning), joinLoop,
// reconnectLoop and isolationLoop (isolation.go).

const (
	reconnectEvery = 2 * time.Second // a healed partition is whole again within about this
	reconnectMax   = 3               // dead cells tried per round
	reconnectFor   = 24 * time.Hour  // a cell dead longer is no longer tried
)

// announceLeave gossips that this cell is leaving (so peers report it as
// left, not dead) and waits until the message has been sent.
func (m *Mesh) announceLeave() {
	if m.numAlive.Load() <= 1 {
		return
	}
	m.mu.Lock()
	l := leaveMsg{Node: m.cfg.Name, Seq: m.st.NextSeq()}
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
		if m.notifyMembers.Load() {
			m.savePeers()
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
			m.st.Prune(time.Now().Add(-tombstoneTTL))
			m.mu.Unlock()
			m.checkLease() // retries after exhaustion
		}
	}
}

// joinLoop joins the seeds with exponential backoff until it succeeds, the
// cell is joined by a peer or the mesh shuts down.
func (m *Mesh) joinLoop() {
	delay := time.Second
	addrs := m.joinAddrs()
	seeds := strings.Join(addrs, ",")
	for {
		select {
		case <-m.done:
			return
		case <-m.joinedCh:
			return
		default:
		}
		n, err := m.ml.Join(addrs)
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

// reconnectLoop tries, every reconnectEvery, to join again a few of the
// cells memberlist declared dead (not those that left): memberlist stops
// gossiping to dead nodes after a while, so without this two sides of a
// healed partition would never find each other again. When this cell is
// alone it tries its seeds too. Not in wg, like joinLoop.
func (m *Mesh) reconnectLoop() {
	tick := time.NewTicker(reconnectEvery)
	defer tick.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-tick.C:
		}
		if m.mlDown.Load() {
			return
		}
		addrs := m.reconnectAddrs()
		if len(addrs) == 0 {
			continue
		}
		n, err := m.ml.Join(addrs)
		if n > 0 {
			m.log.Info("reconnected to cells seen dead", "addrs", strings.Join(addrs, ","), "contacted", n)
		} else {
			m.log.Debug("reconnect failed", "addrs", strings.Join(addrs, ","), "err", oneLine(err))
		}
	}
}

// reconnectAddrs picks up to reconnectMax dead members (dead for less than
// reconnectFor), and the seeds when no other cell is alive.
func (m *Mesh) reconnectAddrs() []string {
	m.mu.Lock()
	var dead []string
	for name, mb := range m.nodes {
		if name == m.cfg.Name || mb.state != NodeDead || !mb.addr.IsValid() || time.Since(mb.since) > reconnectFor {
			continue
		}
		dead = append(dead, netip.AddrPortFrom(mb.addr, mb.port).String())
	}
	m.mu.Unlock()
	rand.Shuffle(len(dead), func(i, j int) { dead[i], dead[j] = dead[j], dead[i] })
	dead = dead[:min(len(dead), reconnectMax)]
	if m.numAlive.Load() <= 1 && m.Joined() {
		for _, s := range m.joinAddrs() {
			if !slices.Contains(dead, s) {
				dead = append(dead, s)
			}
		}
	}
	return dead
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
