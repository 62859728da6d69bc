package mesh

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Isolation. memberlist probes one peer per probe interval, and a probe
// nobody answers lasts the whole interval, stretched to 2 s by awareness
// (mesh.go): a cell cut off alone suspects its n-1 peers one after the
// other, the last after about 1 + 2(n-2) s, and declares it dead the
// suspicion time later: 10.6 s among 5 cells, 20.6 s among 10, over 200 s
// among 100. isolationLoop notices sooner: once a probe of this cell has
// failed unanswered by the indirect helpers too (memberlist's health score
// rises), it pings every peer at once each probe interval; when none has
// answered for the suspicion time, the cell is isolated and Members
// reports every peer dead until one answers again. Only the view is
// changed: memberlist keeps probing, and its own verdicts replace this
// one as they come.

// isolationLoop runs until the mesh shuts down. Not in wg: a sweep waits
// up to memberlist's ProbeTimeout.
func (m *Mesh) isolationLoop() {
	tick := time.NewTicker(m.cfg.ProbeInterval)
	defer tick.Stop()
	var failingSince time.Time // start of the first sweep in a row nobody answered
	for {
		select {
		case <-m.done:
			return
		case <-tick.C:
		}
		if m.mlDown.Load() {
			return
		}
		if failingSince.IsZero() && m.ml.GetHealthScore() == 0 {
			continue // the last probes were answered, or nacked by helpers
		}
		peers := m.probeTargets()
		start := time.Now()
		if len(peers) == 0 || m.sweep(peers) {
			failingSince = time.Time{}
			m.setIsolated(false, 0)
			continue
		}
		if failingSince.IsZero() {
			failingSince = start
		}
		if time.Since(failingSince) >= suspicionTimeout(m.cfg.ProbeInterval, len(peers)+1) {
			m.setIsolated(true, len(peers))
		}
	}
}

// probeTarget is a peer to ping.
type probeTarget struct {
	name string
	addr *net.UDPAddr
}

// probeTargets are the peers memberlist holds alive or suspect, at the
// addresses of the Mesh's own member records, which the event delegate
// copies under memberlist's lock: memberlist's *Node records are rewritten
// by its packet handler (Addr, Port) while a sweep read them, a data race
// that TestNoFlapUnderCPULoad caught (direct.go does the same). Must not be
// called with mu held.
func (m *Mesh) probeTargets() []probeTarget {
	members := m.ml.Members()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []probeTarget
	for _, n := range members {
		if n.Name == m.cfg.Name {
			continue
		}
		if mb := m.nodes[n.Name]; mb != nil && mb.addr.IsValid() {
			out = append(out, probeTarget{n.Name, &net.UDPAddr{IP: mb.addr.AsSlice(), Port: int(mb.port)}})
		}
	}
	return out
}

// sweep pings every peer at once and reports whether any answered within
// memberlist's ProbeTimeout.
func (m *Mesh) sweep(peers []probeTarget) bool {
	m.sweeps.Add(1)
	var answered atomic.Bool
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Go(func() {
			if _, err := m.ml.Ping(p.name, p.addr); err == nil {
				answered.Store(true)
			}
		})
	}
	wg.Wait()
	return answered.Load()
}

// setIsolated records whether this cell is cut off from all its peers
// (peers: how many) and tells the listener when that changes.
func (m *Mesh) setIsolated(v bool, peers int) {
	m.mu.Lock()
	changed := m.isolated != v
	m.isolated = v
	m.mu.Unlock()
	if !changed {
		return
	}
	if v {
		m.log.Warn("ISOLATED: no cell answered this cell's probes; reporting the others dead until one answers", "peers", peers)
	} else {
		m.log.Info("no longer isolated: a cell answered")
	}
	m.signal(&m.notifyMembers)
}
