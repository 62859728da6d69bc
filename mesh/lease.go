package mesh

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Subnet leases: OverlayCIDR is split into /SubnetBits subnets; index 0 is
// reserved. A cell takes its persisted lease at once; otherwise it picks the
// lowest subnet no known node (any state) and no lease record claims, once
// it has joined (and so synced). When two cells claim one subnet the older
// lease wins (tie: smaller name); the loser re-picks unless it has local
// endpoints, in which case it keeps the subnet and complains loudly.

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
	node string
	time int64
}

// older reports whether claim a beats claim b.
func older(a, b claim) bool {
	if a.time != b.time {
		return a.time < b.time
	}
	return a.node < b.node
}

// claimsLocked returns, per subnet, the winning claim of the other nodes:
// from their metadata (alive, suspect, dead or left), else their last lease
// record.
func (m *Mesh) claimsLocked() map[netip.Prefix]claim {
	out := make(map[netip.Prefix]claim)
	add := func(p netip.Prefix, c claim) {
		if have, ok := out[p]; !ok || older(c, have) {
			out[p] = c
		}
	}
	for name, mb := range m.nodes {
		if name != m.cfg.Name && mb.meta.Subnet.IsValid() {
			add(mb.meta.Subnet, claim{name, mb.meta.Time})
		}
	}
	for name, r := range m.st.leases {
		if name == m.cfg.Name {
			continue
		}
		if mb := m.nodes[name]; mb != nil && mb.meta.Subnet.IsValid() {
			continue // metadata is newer than the record
		}
		add(r.Subnet, claim{name, r.Time})
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
	if cur := m.lease.Subnet; cur.IsValid() {
		c, taken := claims[cur]
		switch {
		case (!taken || older(claim{m.cfg.Name, m.lease.Time}, c)) && m.leaseFinal:
			return false
		case !taken || older(claim{m.cfg.Name, m.lease.Time}, c):
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
	if h, ok := m.st.leases[m.cfg.Name]; ok && m.validSubnet(h.Subnet) {
		if _, taken := claims[h.Subnet]; !taken {
			pick, t, final = h.Subnet, h.Time, true // the lease this cell held before
		}
	}
	for i := 1; !pick.IsValid() && i < m.numSubnets(); i++ {
		if _, taken := claims[m.subnetAt(i)]; !taken {
			pick = m.subnetAt(i)
		}
	}
	if !pick.IsValid() {
		m.logRateLimitedLocked("no free subnet left in the overlay", "overlay", m.cfg.OverlayCIDR, "subnet_bits", m.cfg.SubnetBits)
		return dropped
	}
	m.setLeaseLocked(pick, t, final)
	if final {
		m.log.Info("subnet leased", "subnet", pick)
	} else {
		m.log.Debug("subnet claimed, settling", "subnet", pick, "settle", m.cfg.LeaseSettle)
		time.AfterFunc(m.cfg.LeaseSettle, func() { m.kick(m.kickLease) })
	}
	return true
}

func (m *Mesh) setLeaseLocked(p netip.Prefix, t int64, final bool) {
	m.lease = leaseRec{Node: m.cfg.Name, Subnet: p, Time: t, Seq: m.st.nextSeq()}
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
