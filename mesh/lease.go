package mesh

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/mesh/lease"
	"github.com/weft-net/weft/mesh/store"
)

// Subnet leases: OverlayCIDR is split into /SubnetBits subnets; index 0 is
// reserved. A cell takes its persisted lease at once; otherwise, once it has
// joined (and so synced), it picks a subnet no known node (any state) and no
// lease record claims: the first cell the lowest (index 1), a joining cell
// the first free one from its preferred index, hash(name) mod the pool,
// upward (wrapping). Two cells joining at the same moment thus almost never
// pick the same subnet, where "lowest free" made every simultaneous join a
// collision. When two cells claim one subnet the older lease wins (tie:
// smaller name); the loser re-picks (from a preferred index hashed with the
// number of picks it lost, so that losers of one collision do not collide
// again) unless it has local endpoints, in which case it keeps the subnet
// until they are gone, complains loudly and refuses new ones (Conflict).
// Those rules (the pool, the preferred index, which claim wins, the free
// subnet and the takeover picked) are package lease's; here is their life,
// bound to membership: claims come from the node metadata and the lease
// records, and a claim is announced, settled, held and defended.
//
// A fresh pick is tentative until it has settled (see leaseStepLocked): for
// settleTime (LeaseSettle, or a few gossip rounds × log N) no older claim
// arrived by gossip, and then push/pulls with two live cells (a seed and a
// random other member) brought none either. The gossip wait covers the
// rare simultaneous pick (memberlist gossip is best effort: a message is
// sent a limited number of times, to random members); the push/pulls cover
// a claim gossip did not bring in time, and claims the seed had not heard
// of when it synced us (a cell it saw as suspect or dead is not in
// memberlist's push/pull; its lease record is, if the seed has it).
//
// The lease of a dead or departed cell stays reserved for Config.LeaseHold
// (counted from when this cell saw it die, or first learnt of its lease
// record), so that it gets its subnet back when it returns. Only when no
// subnet is free does a cell take over such a lease: one whose hold has
// passed, else (the pool is exhausted) the longest-dead one, logged. A
// takeover names the lease time it replaced, and beats that lease, so a
// returning cell learns that it lost its subnet. With no dead lease either,
// the cell has no lease: LeaseError says why (weft status shows it).

// confirmTimeout bounds the push/pull that confirms a tentative lease; when
// it passes, the lease settles on the gossip wait alone (logged).
const confirmTimeout = time.Second

// leaseSettle is the settling of a tentative lease; guarded by Mesh.mu.
type leaseSettle struct {
	gen     uint64        // bumped by every setLeaseLocked: stale confirmations are ignored
	picked  time.Time     // when the tentative lease was picked
	wait    time.Duration // its gossip wait (settleTime at the pick)
	timer   bool          // a wake-up at picked+wait is scheduled
	confirm confirmState  // the confirming push/pull
	lost    int           // tentative or unused leases lost to older claims
}

type confirmState int

const (
	confirmNone confirmState = iota
	confirmPending
	confirmDone
)

// settleTime is the gossip wait of a fresh lease: LeaseSettle if set, else
// lease.SettleTime for alive cells.
func (m *Mesh) settleTime(alive int) time.Duration {
	if m.cfg.LeaseSettle > 0 {
		return m.cfg.LeaseSettle
	}
	return lease.SettleTime(m.cfg.GossipInterval, alive)
}

// pool is the overlay's pool of subnets.
func (m *Mesh) pool() lease.Pool {
	return lease.Pool{Overlay: m.cfg.OverlayCIDR, Bits: m.cfg.SubnetBits}
}

// claimsLocked returns, per subnet, the claims of the other nodes: from
// their metadata (alive, suspect, dead or left), else their last lease
// record.
func (m *Mesh) claimsLocked() lease.Claims {
	out := make(lease.Claims)
	for name, mb := range m.nodes {
		if name != m.cfg.Name && mb.meta.Subnet.IsValid() {
			c := lease.Claim{Node: name, Time: mb.meta.Time, Takeover: mb.meta.Over}
			if mb.state == NodeDead || mb.state == NodeLeft {
				c.Dead = mb.since
			}
			out.Add(mb.meta.Subnet, c)
		}
	}
	for name, r := range m.st.Leases() {
		if name == m.cfg.Name {
			continue
		}
		if mb := m.nodes[name]; mb != nil && mb.meta.Subnet.IsValid() {
			continue // metadata is newer than the record
		}
		// A node known only by its record is not alive here: its hold
		// counts from when this cell first knew the record.
		seen := m.recSeen[name]
		if seen.IsZero() {
			seen = time.Now()
		}
		out.Add(r.Subnet, lease.Claim{Node: name, Time: r.Time, Takeover: r.Takeover, Dead: seen})
	}
	return out
}

// metaLoop announces this cell's metadata (its lease) after a change, one
// UpdateNode at a time, so that the last call carries the latest metadata.
// UpdateNode blocks until its alive message has been gossiped (up to
// updateTimeout: about a second in a cluster of 50); on the maintain
// goroutine it held up the lease check (the settle of a fresh lease took a
// second whatever LeaseSettle said) and the lease broadcast. Not in wg,
// like reconnectLoop.
func (m *Mesh) metaLoop() {
	for {
		select {
		case <-m.done:
			return
		case <-m.kickMeta:
		}
		if m.mlDown.Load() || m.leaving.Load() {
			return // an update after the leave message would only confuse peers
		}
		if err := m.ml.UpdateNode(updateTimeout); err != nil {
			m.log.Debug("announcing lease", "err", err)
		}
	}
}

// checkLease takes a lease when there is none and defends the one held.
// Runs on the maintain goroutine only.
func (m *Mesh) checkLease() {
	m.mu.Lock()
	changed := m.leaseStepLocked()
	rec := m.lease
	m.mu.Unlock()
	if !changed {
		return
	}
	if err := m.persistLease(rec); err != nil {
		m.log.Error("persisting lease failed", "err", err)
	}
	if err := m.persistState(); err != nil {
		m.log.Error("persisting state failed", "err", err)
	}
	m.kick(m.kickMeta)
	if rec.Subnet.IsValid() {
		b := bcast(store.LeaseMsg(rec))
		m.queue.QueueBroadcast(b)
		m.sendDirect(b) // a fresh claim must not wait behind a joiner's full queue
	}
	m.signal(&m.notifyMembers)
	m.signal(&m.notifyState) // own endpoints' validity follows the lease
}

// leaseStepLocked reports whether m.lease changed (including a tentative
// lease becoming final).
//
// A subnet picked afresh is tentative: it is announced at once (metadata
// and a lease broadcast), but Subnet, WaitSubnet and AddEndpoint see it only
// once it has settled (settledLocked) without an older claim arriving. A
// claim that another cell made moments before we joined may still be in
// gossip when we pick; while tentative, losing to it costs nothing, since no
// container can have an address in it yet. A lease this cell held before,
// and the first cell's lease, are final at once.
func (m *Mesh) leaseStepLocked() bool {
	claims := m.claimsLocked()
	dropped := false
	self := lease.Claim{Node: m.cfg.Name, Time: m.lease.Time, Takeover: m.lease.Takeover}
	if cur := m.lease.Subnet; cur.IsValid() {
		sc, taken := claims[cur]
		c := sc.Win
		switch {
		case (!taken || lease.Older(self, c)) && m.leaseFinal:
			return false
		case !taken || lease.Older(self, c):
			if !m.settledLocked() {
				return false
			}
			m.leaseFinal = true
			m.leaseChangedLocked()
			m.log.Info("subnet leased", "subnet", cur, "settled_in", time.Since(m.ls.picked).Round(time.Millisecond))
			return true
		case m.leaseFinal && m.st.HasLocalEndpoints():
			m.logRateLimitedLocked("SUBNET CONFLICT: another cell holds an older lease of this cell's subnet; "+
				"this cell's containers in it are not served and new ones are refused; remove them and the cell re-picks a free subnet",
				"subnet", cur, "holder", c.Node, "holder_lease", time.Unix(0, c.Time), "our_lease", time.Unix(0, m.lease.Time))
			return false
		}
		m.log.Warn("subnet lease lost to an older lease; re-picking", "subnet", cur, "holder", c.Node, "tentative", !m.leaseFinal)
		m.lease = store.LeaseRec{Node: m.cfg.Name}
		m.leaseFinal = false
		m.ls.lost++
		m.ls.gen++ // a pending confirmation was for the lost lease
		dropped = true
	}
	if !m.joined {
		return dropped
	}
	first := len(m.cfg.Join) == 0
	pick, t, final := netip.Prefix{}, m.st.Now().UnixNano(), first
	var takeover int64
	if h, ok := m.st.Lease(m.cfg.Name); ok && m.pool().Valid(h.Subnet) {
		if _, taken := claims[h.Subnet]; !taken {
			pick, t, final = h.Subnet, h.Time, true // the lease this cell held before
			takeover = h.Takeover
		}
	}
	// The first free subnet from the preferred index upward (index 1 for
	// the first cell), wrapping past the end of the pool.
	start := 1
	if !first {
		start = lease.PreferredIndex(m.cfg.Name, m.ls.lost, m.pool().Len()-1)
	}
	if !pick.IsValid() {
		pick = m.pool().FirstFree(start, claims)
	}
	if !pick.IsValid() {
		// No free subnet: a dead cell's lease whose hold has passed, else
		// (the pool is exhausted) the longest-dead one.
		if best, sc, ok := claims.LongestDead(); ok {
			pick, takeover = best, sc.Win.Time
			if dead := time.Since(sc.DeadSince); dead < m.cfg.LeaseHold {
				m.log.Warn("subnet pool exhausted: taking over the lease of a dead cell before its hold has passed",
					"subnet", best, "holder", sc.Win.Node, "dead_for", dead.Round(time.Second), "lease_hold", m.cfg.LeaseHold)
			} else {
				m.log.Info("taking over the lease of a cell dead longer than the lease hold",
					"subnet", best, "holder", sc.Win.Node, "dead_for", dead.Round(time.Second), "lease_hold", m.cfg.LeaseHold)
			}
		}
	}
	if !pick.IsValid() {
		m.leaseErr = fmt.Sprintf("no free subnet: all %d subnets of %s (/%d) are held by live cells",
			m.pool().Len()-1, m.cfg.OverlayCIDR, m.cfg.SubnetBits)
		m.logRateLimitedLocked("SUBNET POOL EXHAUSTED: "+m.leaseErr, "overlay", m.cfg.OverlayCIDR, "subnet_bits", m.cfg.SubnetBits)
		return dropped
	}
	m.leaseErr = ""
	m.setLeaseLocked(pick, t, takeover, final)
	if final {
		m.log.Info("subnet leased", "subnet", pick)
	} else {
		m.log.Debug("subnet claimed, settling", "subnet", pick, "settle", m.ls.wait)
		m.settledLocked() // schedules the wake-up
	}
	return true
}

// settledLocked reports whether the tentative lease has settled: its gossip
// wait has passed, and then the push/pulls with other cells (confirmLease)
// have completed or timed out. It schedules what is missing: a wake-up at
// the end of the wait, the push/pull; both kick the lease check.
func (m *Mesh) settledLocked() bool {
	s := &m.ls
	if wait := s.wait - time.Since(s.picked); wait > 0 {
		if !s.timer {
			s.timer = true
			gen := s.gen
			time.AfterFunc(wait, func() {
				m.mu.Lock()
				if m.ls.gen == gen {
					m.ls.timer = false
				}
				m.mu.Unlock()
				m.kick(m.kickLease)
			})
		}
		return false
	}
	switch s.confirm {
	case confirmDone:
		return true
	case confirmPending:
		return false
	}
	peers := m.confirmPeersLocked()
	if len(peers) == 0 {
		s.confirm = confirmDone // alone: nobody to ask
		return true
	}
	s.confirm = confirmPending
	go m.confirmLease(s.gen, peers)
	return false
}

// confirmPeersLocked picks the cells to confirm a tentative lease with: a
// live seed (it synced us, and as the cell every joiner of the moment
// pushed its state to, it is the first to hear their claims) and a random
// other live member (a second opinion); when one kind is missing, two of
// the other.
func (m *Mesh) confirmPeersLocked() []string {
	var others, seeds []string
	for name, mb := range m.nodes {
		if name == m.cfg.Name || mb.state != NodeAlive || !mb.addr.IsValid() {
			continue
		}
		a := netip.AddrPortFrom(mb.addr, mb.port).String()
		if slices.Contains(m.cfg.Join, a) {
			seeds = append(seeds, a)
		} else {
			others = append(others, a)
		}
	}
	rand.Shuffle(len(seeds), func(i, j int) { seeds[i], seeds[j] = seeds[j], seeds[i] })
	rand.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	var out []string
	if len(seeds) > 0 {
		out = append(out, seeds[0])
		seeds = seeds[1:]
	}
	if len(others) > 0 {
		out = append(out, others[0])
		others = others[1:]
	}
	for _, rest := range [][]string{others, seeds} {
		for _, a := range rest {
			if len(out) < 2 {
				out = append(out, a)
			}
		}
	}
	return out
}

// confirmLease runs a push/pull with each peer at once (memberlist's Join
// with a live member is a push/pull: its claims are merged, ours sent),
// then lets the lease check finish the settle. Not in wg, like joinLoop: a
// push/pull may block for memberlist's TCP timeout; the wait for them is
// bounded by confirmTimeout.
func (m *Mesh) confirmLease(gen uint64, peers []string) {
	done := make(chan error, len(peers))
	for _, p := range peers {
		go func() {
			if m.mlDown.Load() {
				done <- errors.New("memberlist is down")
				return
			}
			_, err := m.ml.Join([]string{p})
			done <- err
		}()
	}
	t := time.NewTimer(confirmTimeout)
	defer t.Stop()
wait:
	for range peers {
		select {
		case err := <-done:
			if err != nil {
				m.log.Info("a push/pull confirming the tentative lease failed", "peers", strings.Join(peers, ","), "err", oneLine(err))
			}
		case <-t.C:
			m.log.Info("the push/pulls confirming the tentative lease timed out; settling without them",
				"peers", strings.Join(peers, ","), "timeout", confirmTimeout)
			break wait
		case <-m.done:
			return
		}
	}
	m.mu.Lock()
	if m.ls.gen == gen && m.ls.confirm == confirmPending {
		m.ls.confirm = confirmDone
	}
	m.mu.Unlock()
	m.kick(m.kickLease)
}

func (m *Mesh) setLeaseLocked(p netip.Prefix, t, takeover int64, final bool) {
	m.lease = store.LeaseRec{Node: m.cfg.Name, Subnet: p, Time: t, Takeover: takeover, Seq: m.st.NextSeq()}
	m.st.PutLease(m.lease)
	m.leaseFinal = final
	m.ls.gen++
	m.ls.picked, m.ls.wait, m.ls.timer, m.ls.confirm = time.Now(), m.settleTime(int(m.numAlive.Load())), false, confirmNone
	m.leaseChangedLocked()
}

// leaseChangedLocked wakes WaitSubnet callers.
func (m *Mesh) leaseChangedLocked() {
	close(m.leaseWait)
	m.leaseWait = make(chan struct{})
}

func (m *Mesh) logRateLimitedLocked(msg string, args ...any) {
	if now := time.Now(); now.Sub(m.conflictLog) >= logEvery {
		m.conflictLog = now
		m.log.Error(msg, args...)
	}
}

// LeaseError says why this cell has no lease (the subnet pool is
// exhausted), or "" when there is no such problem.
func (m *Mesh) LeaseError() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leaseErr
}

// leaseHoldersLocked filters eps (in place) to the records whose owner
// holds the lease of the subnet the record's IP is in: of the cells that
// claim one subnet, the one whose claim wins by older. A conflict's loser
// keeps its records (it refuses to renumber a cell that has containers)
// but they are not served while the winner holds the subnet.
func (m *Mesh) leaseHoldersLocked(eps []Endpoint) []Endpoint {
	var claims lease.Claims
	holder := func(owner string) bool {
		sub, ok := m.ownerSubnetLocked(owner)
		if !ok {
			return true // endpointsLocked served it: nothing to compare
		}
		if claims == nil {
			claims = m.claimsLocked()
			if m.lease.Subnet.IsValid() {
				self := lease.Claim{Node: m.cfg.Name, Time: m.lease.Time, Takeover: m.lease.Takeover}
				if sc, taken := claims[m.lease.Subnet]; !taken || lease.Older(self, sc.Win) {
					claims[m.lease.Subnet] = lease.Subnet{Win: self}
				}
			}
		}
		sc, ok := claims[sub]
		return !ok || sc.Win.Node == owner
	}
	out := eps[:0]
	for _, e := range eps {
		if holder(e.Cell) {
			out = append(out, e)
		}
	}
	return out
}
