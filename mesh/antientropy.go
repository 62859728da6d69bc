package mesh

import (
	"net"
	"slices"

	"github.com/hashicorp/memberlist"
)

// sendPolicyBuckets sends peer the policy registers of this cell that fall
// in the digest buckets differ (see fullState), as one msgPolSet message
// over memberlist's TCP (SendReliable, at most 20 MiB: some 200k rules
// compressed). It runs in the background, one send per peer at a time: a
// push/pull that finds the sets still apart while a send is under way
// starts none. Must not be called with mu held.
func (m *Mesh) sendPolicyBuckets(peer string, differ []int) {
	m.mu.Lock()
	mb := m.nodes[peer]
	if mb == nil || mb.state != NodeAlive || !mb.addr.IsValid() || m.aeSending[peer] {
		m.mu.Unlock()
		return
	}
	in := make([]bool, polBuckets)
	for _, i := range differ {
		in[i] = true
	}
	var ps []polEntry
	for k, p := range m.st.pols {
		if in[polBucket(fnv64a(fnvOffset, k))] {
			ps = append(ps, p)
		}
	}
	to := &memberlist.Node{Name: peer, Addr: net.IP(mb.addr.AsSlice()), Port: mb.port}
	if len(ps) == 0 || m.closing {
		m.mu.Unlock()
		return
	}
	m.aeSending[peer] = true
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		msg := encode(msgPolSet, ps)
		if len(msg) > zipAbove {
			msg = zipMsg(msgPolSetZ, msg)
		}
		if err := m.ml.SendReliable(to, msg); err != nil {
			m.log.Debug("anti-entropy send failed", "to", peer, "err", err)
		} else {
			m.aeSent.Add(uint64(len(ps)))
		}
		m.mu.Lock()
		delete(m.aeSending, peer)
		m.mu.Unlock()
	}()
}

// differingBuckets returns the buckets in which digest sum differs from
// this cell's. Called with mu held.
func (m *Mesh) differingBucketsLocked(sum []uint64) []int {
	var differ []int
	for i, x := range sum {
		if x != m.st.polSum[i] {
			differ = append(differ, i)
		}
	}
	return slices.Clip(differ)
}
