package mesh

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// Subnet leases: OverlayCIDR is split into /SubnetBits subnets; index 0 is
// reserved. A cell takes its persisted lease at once; otherwise it picks the
// lowest subnet no known node (any state) and no lease record claims, once
// it has joined (and so synced). When two cells claim one subnet the older
// lease wins (tie: smaller name); the loser re-picks unless it has local
// endpoints, in which case it keeps the subnet and complains loudly.
//
// The lease of a dead or departed cell stays reserved for Config.LeaseHold
// (counted from when this cell saw it die, or first learnt of its lease
// record), so that it gets its subnet back when it returns. Only when no
// subnet is free does a cell take over such a lease: one whose hold has
// passed, else (the pool is exhausted) the longest-dead one, logged. A
// takeover names the lease time it replaced, and beats that lease, so a
// returning cell learns that it lost its subnet. With no dead lease either,
// the cell has no lease: LeaseError says why (weft status shows it).

func (m *Mesh) numSubnets() int { return 1 << (m.cfg.SubnetBits - m.cfg.OverlayCIDR.Bits()) }

// subnetAt returns the i-th subnet of the overlay.
func (m *Mesh) subnetAt(i int) netip.Prefix {
	base := m.cfg.OverlayCIDR.Addr()
	b := base.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	shift := uint(base.BitLen() - m.cfg.SubnetBits) // < 64 for IPv4; may exceed for IPv6
	v := uint64(i)
	switch {
	case shift >= 64:
		hi += v << (shift - 64)
	default:
		add := v << shift
		carry := uint64(0)
		if shift > 0 && v>>(64-shift) != 0 {
			carry = v >> (64 - shift)
		}
		nlo := lo + add
		if nlo < lo {
			carry++
		}
		lo, hi = nlo, hi+carry
	}
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	a := netip.AddrFrom16(b)
	if base.Is4() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, m.cfg.SubnetBits)
}

// validSubnet reports whether p is a leasable subnet of the overlay.
func (m *Mesh) validSubnet(p netip.Prefix) bool {
	return p.IsValid() && p.Bits() == m.cfg.SubnetBits && p.Masked() == p &&
		m.cfg.OverlayCIDR.Contains(p.Addr()) && p != m.subnetAt(0)
}

type claim struct {
	node     string
	time     int64
	takeover int64     // lease time of a dead cell's lease this claim replaced
	dead     time.Time // when its holder was last seen dead or left; zero: alive
}

// older reports whether claim a beats claim b: a claim that took over b's
// lease beats it, else the older lease wins (tie: the smaller name).
func older(a, b claim) bool {
	switch {
	case a.takeover != 0 && a.takeover >= b.time:
		return true
	case b.takeover != 0 && b.takeover >= a.time:
		return false
	case a.time != b.time:
		return a.time < b.time
	}
	return a.node < b.node
}

// subnetClaims is what other nodes claim of one subnet.
type subnetClaims struct {
	win       claim     // the winning claim
	allDead   bool      // every claimant is dead or left
	deadSince time.Time // with allDead: when the last of them died
}

// claimsLocked returns, per subnet, the claims of the other nodes: from
// their metadata (alive, suspect, dead or left), else their last lease
// record.
func (m *Mesh) claimsLocked() map[netip.Prefix]subnetClaims {
	out := make(map[netip.Prefix]subnetClaims)
	add := func(p netip.Prefix, c claim) {
		have, ok := out[p]
		if !ok {
			out[p] = subnetClaims{win: c, allDead: !c.dead.IsZero(), deadSince: c.dead}
			return
		}
		if older(c, have.win) {
			have.win = c
		}
		have.allDead = have.allDead && !c.dead.IsZero()
		if c.dead.After(have.deadSince) {
			have.deadSince = c.dead
		}
		out[p] = have
	}
	for name, mb := range m.nodes {
		if name != m.cfg.Name && mb.meta.Subnet.IsValid() {
			c := claim{node: name, time: mb.meta.Time, takeover: mb.meta.Over}
			if mb.state == NodeDead || mb.state == NodeLeft {
				c.dead = mb.since
			}
			add(mb.meta.Subnet, c)
		}
	}
	for name, r := range m.st.leases {
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
		add(r.Subnet, claim{node: name, time: r.Time, takeover: r.Takeover, dead: seen})
	}
	return out
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
	if !m.mlDown.Load() {
		if err := m.ml.UpdateNode(updateTimeout); err != nil {
			m.log.Debug("announcing lease", "err", err)
		}
	}
	if rec.Subnet.IsValid() {
		m.queue.QueueBroadcast(leaseBroadcast(rec))
	}
	m.signal(&m.notifyMembers)
	m.signal(&m.notifyState) // own endpoints' validity follows the lease
}

// leaseStepLocked reports whether m.lease changed (including a tentative
// lease becoming final).
//
// A subnet picked afresh is tentative: it is announced at once (metadata
// and a lease broadcast), but Subnet, WaitSubnet and AddEndpoint see it only
// after LeaseSettle has passed without an older claim arriving. A claim
// that another cell made moments before we joined may still be in gossip
// when we pick; while tentative, losing to it costs nothing, since no
// container can have an address in it yet. A lease this cell held before,
// and the first cell's lease, are final at once.
func (m *Mesh) leaseStepLocked() bool {
	claims := m.claimsLocked()
	dropped := false
	self := claim{node: m.cfg.Name, time: m.lease.Time, takeover: m.lease.Takeover}
	if cur := m.lease.Subnet; cur.IsValid() {
		sc, taken := claims[cur]
		c := sc.win
		switch {
		case (!taken || older(self, c)) && m.leaseFinal:
			return false
		case !taken || older(self, c):
			if wait := m.cfg.LeaseSettle - time.Since(m.leasePicked); wait > 0 {
				time.AfterFunc(wait, func() { m.kick(m.kickLease) })
				return false
			}
			m.leaseFinal = true
			m.leaseChangedLocked()
			m.log.Info("subnet leased", "subnet", cur)
			return true
		case m.leaseFinal && m.st.hasLocalEndpoints():
			m.logRateLimitedLocked("SUBNET CONFLICT: another cell holds an older lease of this cell's subnet; "+
				"refusing to renumber a cell that has containers, traffic to them is ambiguous until one side is fixed",
				"subnet", cur, "holder", c.node, "holder_lease", time.Unix(0, c.time), "our_lease", time.Unix(0, m.lease.Time))
			return false
		}
		m.log.Warn("subnet lease lost to an older lease; re-picking", "subnet", cur, "holder", c.node, "tentative", !m.leaseFinal)
		m.lease = leaseRec{Node: m.cfg.Name}
		m.leaseFinal = false
		dropped = true
	}
	if !m.joined {
		return dropped
	}
	pick, t, final := netip.Prefix{}, m.st.now().UnixNano(), len(m.cfg.Join) == 0
	var takeover int64
	if h, ok := m.st.leases[m.cfg.Name]; ok && m.validSubnet(h.Subnet) {
		if _, taken := claims[h.Subnet]; !taken {
			pick, t, final = h.Subnet, h.Time, true // the lease this cell held before
			takeover = h.Takeover
		}
	}
	for i := 1; !pick.IsValid() && i < m.numSubnets(); i++ {
		if _, taken := claims[m.subnetAt(i)]; !taken {
			pick = m.subnetAt(i)
		}
	}
	if !pick.IsValid() {
		// No free subnet: a dead cell's lease whose hold has passed, else
		// (the pool is exhausted) the longest-dead one.
		var best netip.Prefix
		var bestDead time.Time
		for p, sc := range claims {
			if sc.allDead && (!best.IsValid() || sc.deadSince.Before(bestDead) ||
				(sc.deadSince.Equal(bestDead) && p.Addr().Less(best.Addr()))) {
				best, bestDead = p, sc.deadSince
			}
		}
		if best.IsValid() {
			sc := claims[best]
			pick, takeover = best, sc.win.time
			if dead := time.Since(bestDead); dead < m.cfg.LeaseHold {
				m.log.Warn("subnet pool exhausted: taking over the lease of a dead cell before its hold has passed",
					"subnet", best, "holder", sc.win.node, "dead_for", dead.Round(time.Second), "lease_hold", m.cfg.LeaseHold)
			} else {
				m.log.Info("taking over the lease of a cell dead longer than the lease hold",
					"subnet", best, "holder", sc.win.node, "dead_for", dead.Round(time.Second), "lease_hold", m.cfg.LeaseHold)
			}
		}
	}
	if !pick.IsValid() {
		m.leaseErr = fmt.Sprintf("no free subnet: all %d subnets of %s (/%d) are held by live cells",
			m.numSubnets()-1, m.cfg.OverlayCIDR, m.cfg.SubnetBits)
		m.logRateLimitedLocked("SUBNET POOL EXHAUSTED: "+m.leaseErr, "overlay", m.cfg.OverlayCIDR, "subnet_bits", m.cfg.SubnetBits)
		return dropped
	}
	m.leaseErr = ""
	m.setLeaseLocked(pick, t, takeover, final)
	if final {
		m.log.Info("subnet leased", "subnet", pick)
	} else {
		m.log.Debug("subnet claimed, settling", "subnet", pick, "settle", m.cfg.LeaseSettle)
		time.AfterFunc(m.cfg.LeaseSettle, func() { m.kick(m.kickLease) })
	}
	return true
}

func (m *Mesh) setLeaseLocked(p netip.Prefix, t, takeover int64, final bool) {
	m.lease = leaseRec{Node: m.cfg.Name, Subnet: p, Time: t, Takeover: takeover, Seq: m.st.nextSeq()}
	m.st.leases[m.cfg.Name] = m.lease
	m.leaseFinal, m.leasePicked = final, time.Now()
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
