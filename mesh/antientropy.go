package mesh

import (
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/weft-net/weft/mesh/store"
)

// Policy registers also travel in batches over memberlist's TCP user
// messages (store.MsgPolSet), besides one gossip message per change:
//
//   - anti-entropy: a periodic push/pull carries the policy digest, and a
//     cell whose digest differs sends the peer its registers of the
//     differing buckets (sendPolicyBuckets; see store.FullState);
//   - batches: a batch of at least bulkPolicies changes (a policy push)
//     goes to directFanout random live members as one message instead of
//     a gossip message per change (spreadPolicies). memberlist gossips a
//     few messages per packet a few times a second: 100k queued changes
//     held some 80 MB in the queue and took many minutes to get out. And a
//     batch that arrives as one message is merged as one (under one hold
//     of mu): gossip would deliver a push that replaces rule 8082 by
//     8081-8090 as two messages, and a cell that merged the removal first
//     would cut the connections on 8082 (issue 22).
//
// A cell that learns registers from a batch spreads what was news to it
// the same way, so a batch reaches every cell in O(log N) hops and each
// cell forwards a register once.

// bulkPolicies is the size from which a batch of changed registers spreads
// as batches rather than as gossip: every batch, so that each cell applies
// it whole.
const bulkPolicies = 2

// policyBatch is the most registers one message carries: about 1.2 MB
// compressed, well under memberlist's 20 MiB for a user message. Larger
// sends go as several messages. An atomic for tests, which lower it while
// other tests' cells may still be running.
var policyBatch atomic.Int64

func init() { policyBatch.Store(10_000) }

// aeCooldown is the least time between the end of one send of policy
// registers to a peer and an anti-entropy send to it.
const aeCooldown = time.Second

// maxOutbox bounds the registers waiting for one peer. Past it, more are
// dropped: the periodic anti-entropy repairs what a peer missed.
const maxOutbox = 400_000

// outbox holds the registers waiting to be sent to one peer; a goroutine
// drains it while it is not empty. waiting holds ps's registers, so that
// one queued twice (the differing buckets of an anti-entropy send, and
// the same registers relayed back by spreadPolicies to the cell they came
// from) waits once and no message carries a register twice.
type outbox struct {
	to      *memberlist.Node
	ps      []store.PolicyReg
	waiting map[regID]struct{}
}

// regID identifies one version of a policy register.
type regID struct {
	rule    store.WireRule
	stamp   uint64
	present bool
}

func idOf(p store.PolicyReg) regID { return regID{p.Rule, p.Stamp, p.Present} }

// sendPolicyBuckets sends peer the policy registers of this cell that fall
// in the digest buckets differ (see store.FullState), unless registers for peer
// are still waiting or being sent, or the last were sent less than
// aeCooldown ago (the peer may still be merging them): every push/pull
// until they are merged would queue the same registers again. With a
// push/pull every 200 ms and a busy receiver, the outbox grew faster than
// it drained, and two cells differing by 1500 rules did not agree within
// 10 s. The first push/pull after that compares the digests again. Must
// not be called with mu held.
func (m *Mesh) sendPolicyBuckets(peer string, differ []int) {
	in := make([]bool, store.DigestBuckets)
	for _, i := range differ {
		in[i] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if ob := m.outboxes[peer]; ob != nil || time.Since(m.aeDone[peer]) < aeCooldown {
		m.aeSkipped.Add(1)
		return
	}
	delete(m.aeDone, peer)
	m.queuePoliciesLocked(peer, m.st.PoliciesIn(in))
}

// spreadPolicies sends ps to directFanout random live members. Must not be
// called with mu held.
func (m *Mesh) spreadPolicies(ps []store.PolicyReg) {
	if len(ps) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var to []string
	for name, mb := range m.nodes {
		if name != m.cfg.Name && mb.state == NodeAlive && mb.addr.IsValid() {
			to = append(to, name)
		}
	}
	rand.Shuffle(len(to), func(i, j int) { to[i], to[j] = to[j], to[i] })
	for _, name := range to[:min(len(to), directFanout)] {
		m.queuePoliciesLocked(name, ps)
	}
}

// queuePoliciesLocked adds ps to peer's outbox and starts its sender if
// none runs. The sender sends the outbox in messages of at most
// policyBatch registers (compressed above store.ZipAbove), one at a time, until
// it is empty.
func (m *Mesh) queuePoliciesLocked(peer string, ps []store.PolicyReg) {
	mb := m.nodes[peer]
	if len(ps) == 0 || m.closing || mb == nil || mb.state != NodeAlive || !mb.addr.IsValid() {
		return
	}
	ob := m.outboxes[peer]
	if ob == nil {
		ob = &outbox{}
		m.outboxes[peer] = ob
		m.wg.Add(1)
		go m.drainOutbox(peer, ob)
	}
	if len(ob.ps)+len(ps) > maxOutbox {
		m.log.Warn("policy batch dropped: too many waiting for the peer; anti-entropy will repair it",
			"peer", peer, "rules", len(ps), "waiting", len(ob.ps))
		return
	}
	ob.to = &memberlist.Node{Name: peer, Addr: net.IP(mb.addr.AsSlice()), Port: mb.port}
	if ob.waiting == nil {
		ob.waiting = make(map[regID]struct{}, len(ps))
	}
	for _, p := range ps {
		id := idOf(p)
		if _, queued := ob.waiting[id]; !queued {
			ob.waiting[id] = struct{}{}
			ob.ps = append(ob.ps, p)
		}
	}
}

func (m *Mesh) drainOutbox(peer string, ob *outbox) {
	defer m.wg.Done()
	for {
		m.mu.Lock()
		ps, to := ob.ps, ob.to
		if batch := int(policyBatch.Load()); len(ps) > batch {
			ob.ps = ps[batch:]
			ps = ps[:batch:batch]
		} else {
			ob.ps = nil
		}
		for _, p := range ps {
			delete(ob.waiting, idOf(p))
		}
		if len(ps) == 0 || m.closing {
			delete(m.outboxes, peer)
			m.aeDone[peer] = time.Now()
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
		msg := store.Encode(store.MsgPolSet, ps)
		if len(msg) > store.ZipAbove {
			msg = store.Zip(store.MsgPolSetZ, msg)
		}
		if err := m.ml.SendReliable(to, msg); err != nil {
			m.log.Debug("policy batch send failed", "to", peer, "rules", len(ps), "err", err)
		} else {
			m.aeSent.Add(uint64(len(ps)))
			for n := uint64(len(ps)); ; {
				if old := m.aeMaxMsg.Load(); n <= old || m.aeMaxMsg.CompareAndSwap(old, n) {
					break
				}
			}
		}
	}
}
