package mesh

import (
	"cmp"
	"encoding/json"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/weft-net/weft/mesh/store"
)

// msgLeave is the gossip message of a leave (leaveMsg): membership's own
// message type; the replicated state's are store.Msg*, and must not use
// this byte.
const msgLeave byte = 'x'

// The push/pull state (store.FullState) and policy batches travel
// compressed above store.ZipAbove bytes: memberlist refuses either over
// 20 MiB.

// joinGrace lets the push/pull of a peer that joined us finish before this
// cell counts itself joined and picks a lease.
const joinGrace = 500 * time.Millisecond

// joinPolicyList is the largest policy set a join's push/pull lists in
// full; a larger one goes as a digest, and a side that lacks registers
// gets the differing buckets in batches (policyBatch). Both sides of a
// join list, without knowing what the other holds, and a restarted cell
// holds its peers' set already (state.json): listing 10k rules made each
// side of every restart encode, compress, decode, verify and merge 10k
// registers it had (about 25 MB of live heap at once; the ladder's agents
// peaked at 70 MB of RSS, 44 without). With digests a restart with equal
// sets sends none, and a fresh cell gets 10k rules in 1.4 s instead of
// 2.2 s (the list held up the join). memberlist refuses a push/pull state
// over 20 MiB. An atomic for tests, as policyBatch is.
var joinPolicyList atomic.Int64

func init() { joinPolicyList.Store(1000) }

// leaveMsg announces a graceful leave. memberlist v0.7.0 reports left and
// dead nodes alike (Node.State is never set), so a cell says it is leaving
// before it calls Leave. Seq (the sender's owner sequence) drops duplicates.
type leaveMsg struct {
	Node string `json:"n"`
	Seq  uint64 `json:"q"`
}

// nodeMeta is the memberlist node metadata (< 512 bytes).
type nodeMeta struct {
	Key    string       `json:"k,omitempty"`
	Port   int          `json:"p,omitempty"`
	Subnet netip.Prefix `json:"s,omitzero"`
	Time   int64        `json:"t,omitempty"` // lease time, unix ns
	Over   int64        `json:"o,omitempty"` // lease time of the dead cell's lease it took over
	Feat   Features     `json:"f,omitempty"` // what the cell's data plane accepts (SetFeatures)
	Ver    string       `json:"v,omitempty"` // software version (Config.Version); absent from cells older than it
}

func parseMeta(b []byte) nodeMeta {
	var nm nodeMeta
	if json.Unmarshal(b, &nm) != nil {
		return nodeMeta{}
	}
	nm.Ver = clipVersion(nm.Ver)
	return nm
}

// broadcast is one queued gossip message. A newer message about the same
// record (same name) replaces it in the queue.
type broadcast struct {
	name string
	msg  []byte
	done chan struct{} // if not nil, closed when the queue is done with it
	once sync.Once
}

var _ memberlist.NamedBroadcast = (*broadcast)(nil)

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	nb, ok := o.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}
func (b *broadcast) Name() string    { return b.name }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished() {
	if b.done != nil {
		b.once.Do(func() { close(b.done) })
	}
}

// sentinel stays in the broadcast queue forever: its message never fits a
// packet, so it is never sent. It works around hashicorp/memberlist#263:
// the queue resets its id generator whenever it becomes empty, also in the
// middle of replacing a named broadcast, and a later message with the same
// (transmits, length, id) silently replaces a queued one.
type sentinel struct{}

var (
	_            memberlist.UniqueBroadcast = sentinel{}
	sentinelBody                            = make([]byte, 1<<16)
)

func (sentinel) Invalidates(memberlist.Broadcast) bool { return false }
func (sentinel) UniqueBroadcast()                      {}
func (sentinel) Message() []byte                       { return sentinelBody }
func (sentinel) Finished()                             {}

// pendingBroadcasts is the number of queued gossip messages.
func (m *Mesh) pendingBroadcasts() int { return m.queue.NumQueued() - 1 }

func leaveBroadcast(l leaveMsg) *broadcast { return bcast(l.msg()) }

func (l leaveMsg) msg() store.Msg {
	return store.Msg{Name: "x/" + l.Node, Body: store.Encode(msgLeave, l)}
}

// finish acts on a merge outside mu: queue, notify, persist, lease check.
func (m *Mesh) finish(res store.Result) {
	for _, msg := range res.Out {
		m.queue.QueueBroadcast(bcast(msg))
	}
	if res.Visible {
		m.signal(&m.notifyState)
		if f := m.afterChange.Load(); f != nil {
			(*f)()
		}
	}
	if res.Stored {
		m.kick(m.kickPersist)
	}
	if res.Lease {
		m.kick(m.kickLease)
	}
	if res.Keyring {
		if err := m.persistKeyring(); err != nil {
			m.log.Error("persisting keyring failed", "err", err)
		}
	}
}

// delegate is the memberlist.Delegate of a Mesh. memberlist calls it
// concurrently from its goroutines, possibly with its own locks held: it
// takes Mesh.mu only briefly and never calls back into memberlist.
type delegate Mesh

var _ memberlist.Delegate = (*delegate)(nil)

func (d *delegate) NodeMeta(limit int) []byte {
	m := (*Mesh)(d)
	m.mu.Lock()
	nm := nodeMeta{Key: m.cfg.WGPublicKey, Port: m.cfg.WGPort, Subnet: m.lease.Subnet, Feat: m.features, Ver: m.cfg.Version}
	if nm.Subnet.IsValid() {
		nm.Time, nm.Over = m.lease.Time, m.lease.Takeover
	}
	m.mu.Unlock()
	b, _ := json.Marshal(nm)
	if len(b) > limit { // cannot happen: Config validation bounds the key
		return nil
	}
	return b
}

// NotifyMsg applies one gossip message (or TCP user message: store.MsgPolSet).
// A message carrying signed changes (policy, route, keyring) that is not
// well formed is counted in RejectedPolicies, an endpoint one in
// RejectedEndpoints. borrowed: b is only read here.
func (d *delegate) NotifyMsg(b []byte) {
	m := (*Mesh)(d)
	if len(b) < 2 {
		return
	}
	var (
		res store.Result
		err error
	)
	switch b[0] {
	case store.MsgEndpoint:
		var e store.EndpointRec
		if err = json.Unmarshal(b[1:], &e); err == nil {
			if err = e.WellFormed(); err != nil {
				m.st.CountRejectedEndpoint()
				break
			}
			m.mu.Lock()
			m.mergeEndpointLocked(e, true, &res)
			m.mu.Unlock()
		}
	case store.MsgPolicy:
		var p store.PolicyReg
		if err = json.Unmarshal(b[1:], &p); err == nil {
			err = p.WellFormed()
		}
		if err != nil {
			m.st.RejectSigned("policy change", "gossip", err)
			return
		}
		m.mu.Lock()
		m.st.MergePolicy(p, true, &res)
		m.mu.Unlock()
	case store.MsgLease:
		var r store.LeaseRec
		if err = json.Unmarshal(b[1:], &r); err == nil {
			m.mu.Lock()
			m.mergeLeaseLocked(r, true, &res)
			m.mu.Unlock()
		}
	case store.MsgRoute:
		var e store.RouteReg
		if err = json.Unmarshal(b[1:], &e); err == nil {
			err = e.WellFormed()
		}
		if err != nil {
			m.st.RejectSigned("route change", "gossip", err)
			return
		}
		m.mu.Lock()
		m.st.MergeRoute(e, true, &res)
		m.mu.Unlock()
	case store.MsgKeyring:
		var op store.KeyringOp
		if err = json.Unmarshal(b[1:], &op); err == nil {
			err = op.WellFormed()
		}
		if err != nil {
			m.st.RejectSigned("keyring operation", "gossip", err)
			return
		}
		m.mu.Lock()
		m.mergeKeyringLocked(op, true, &res)
		m.mu.Unlock()
	case msgLeave:
		var l leaveMsg
		if err = json.Unmarshal(b[1:], &l); err == nil {
			m.mergeLeave(l, &res)
		}
	case store.MsgPolSet, store.MsgPolSetZ:
		ps, err := store.DecodePolicyBatch(b, func(p store.PolicyReg, err error) { m.st.RejectSigned("policy change", p.Origin, err) })
		if err != nil {
			m.st.RejectSigned("policy batch", "gossip", err)
			return
		}
		m.mu.Lock()
		news := m.st.MergePolicies(ps, &res)
		m.mu.Unlock()
		m.spreadPolicies(news) // news to this cell may be news to others
	default:
		m.log.Debug("unknown gossip message", "type", b[0])
		return
	}
	if err != nil {
		m.log.Debug("bad gossip message", "type", string(b[0]), "err", err)
		return
	}
	m.finish(res)
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte {
	m := (*Mesh)(d)
	m.mu.Lock()
	fs := m.st.State(join, int(joinPolicyList.Load()))
	fs.Keyring = m.keyringOpsLocked()
	m.mu.Unlock()
	b := store.Encode(store.MsgFull, fs)
	if len(b) > store.ZipAbove {
		b = store.ZipState(b)
	}
	return b
}

// MergeRemoteState merges a peer's full state. A state that is not well
// formed is refused and counted in RejectedPolicies; entries of it that
// are not well formed are left out and counted (RejectedPolicies,
// RejectedEndpoints). borrowed: buf is only read.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	m := (*Mesh)(d)
	if len(buf) < 2 || buf[0] != store.MsgFull && buf[0] != store.MsgFullZ {
		return
	}
	fs, err := store.DecodeFullState(buf, store.Rejects{
		Policy:   func(p store.PolicyReg, err error) { m.st.RejectSigned("policy change", p.Origin, err) },
		Endpoint: func(store.EndpointRec, error) { m.st.CountRejectedEndpoint() },
		Route:    func(e store.RouteReg, err error) { m.st.RejectSigned("route change", e.Origin, err) },
		Keyring:  func(_ store.KeyringOp, err error) { m.st.RejectSigned("keyring operation", "push/pull", err) },
	})
	if err != nil {
		m.st.RejectSigned("push/pull state", "push/pull", err)
		return
	}
	var res store.Result
	listed := make(map[netip.Addr]bool)
	m.mu.Lock()
	for _, r := range fs.Leases {
		m.mergeLeaseLocked(r, false, &res)
	}
	for _, e := range fs.Endpoints {
		m.mergeEndpointLocked(e, false, &res)
		if e.Owner == fs.From {
			listed[e.IP.Unmap()] = true
		}
	}
	if fs.From != "" {
		m.st.ExpireOwner(fs.From, fs.Seq, listed, &res)
	}
	// Did this cell list its policies in its own state of this exchange
	// (LocalState ran before this, on either side of a push/pull)? If
	// both did, each has everything; otherwise the digests say what
	// either side lacks.
	bothListed := fs.PolList && join && m.st.NumPolicies() <= int(joinPolicyList.Load())
	m.st.MergePolicies(fs.Policies, &res)
	var differ []int
	if len(fs.PolSum) == store.DigestBuckets && !bothListed {
		differ = m.st.DifferingBuckets(fs.PolSum)
	}
	for _, e := range fs.Routes {
		m.st.MergeRoute(e, false, &res)
	}
	slices.SortFunc(fs.Keyring, func(a, b store.KeyringOp) int { return cmp.Compare(a.Stamp, b.Stamp) })
	for _, op := range fs.Keyring {
		m.mergeKeyringLocked(op, false, &res)
	}
	m.mu.Unlock()
	m.finish(res)
	if len(differ) > 0 && fs.From != "" && fs.From != m.cfg.Name {
		m.sendPolicyBuckets(fs.From, differ)
	}
}

// events is the memberlist.EventDelegate of a Mesh. memberlist calls it
// with its node lock held, one call at a time.
type events Mesh

var _ memberlist.EventDelegate = (*events)(nil)

func (ev *events) NotifyJoin(n *memberlist.Node) {
	m := (*Mesh)(ev)
	m.setMember(n, NodeAlive, true)
	if n.Name != m.cfg.Name {
		m.mu.Lock()
		joined := m.joined
		m.mu.Unlock()
		if !joined {
			// A peer joined us: we are in a cluster even if our seeds
			// never answer.
			time.AfterFunc(joinGrace, m.setJoined)
		}
	}
}

// NotifyLeave: a node died or left (n.State does not say which).
func (ev *events) NotifyLeave(n *memberlist.Node) {
	(*Mesh)(ev).setMember(n, NodeDead, false)
}

// NotifyUpdate: an alive node's metadata changed. It does not undo a leave
// announcement: a cell stopping within a second of its start can have an
// UpdateNode in flight that reaches a peer after its leave message.
func (ev *events) NotifyUpdate(n *memberlist.Node) {
	(*Mesh)(ev).setMember(n, NodeAlive, false)
}

// mergeLeave records that a node announced its graceful leave.
func (m *Mesh) mergeLeave(l leaveMsg, res *store.Result) {
	m.mu.Lock()
	mb := m.nodes[l.Node]
	if l.Node == m.cfg.Name || mb == nil || l.Seq <= mb.leaveSeq {
		m.mu.Unlock()
		return
	}
	mb.leaveSeq, mb.leaving = l.Seq, true
	changed := mb.state == NodeDead
	if changed {
		mb.state = NodeLeft
	}
	m.mu.Unlock()
	res.Send(l.msg())
	if changed {
		m.signal(&m.notifyMembers)
	}
}

// setMember records a memberlist event. joined: n came (back) alive, which
// ends an earlier leave.
func (m *Mesh) setMember(n *memberlist.Node, st NodeState, joined bool) {
	meta := parseMeta(n.Meta)
	if !m.pool().Valid(meta.Subnet) {
		meta.Subnet, meta.Time, meta.Over = netip.Prefix{}, 0, 0
	}
	m.mu.Lock()
	mb := m.nodes[n.Name]
	if mb == nil {
		mb = &member{name: n.Name}
		m.nodes[n.Name] = mb
	}
	switch {
	case joined:
		mb.leaving = false
	case st != NodeAlive && mb.leaving:
		st = NodeLeft
	}
	switch {
	case st == NodeAlive:
		mb.since = time.Time{}
	case mb.since.IsZero() || mb.state == NodeAlive:
		mb.since = time.Now()
	}
	mb.addr, mb.port, mb.state = addrFromIP(n.Addr), n.Port, st
	oldSubnet := mb.meta.Subnet
	// A dead or left node keeps the metadata it had.
	if st == NodeAlive || len(n.Meta) > 0 {
		mb.meta = meta
	}
	subnetChanged := mb.meta.Subnet != oldSubnet
	alive := 0
	for _, x := range m.nodes {
		if x.state == NodeAlive {
			alive++
		}
	}
	m.noteViewLocked()
	m.mu.Unlock()
	m.numAlive.Store(int32(max(alive, 1)))
	m.signal(&m.notifyMembers)
	if subnetChanged { // which endpoints are valid may have changed
		m.signal(&m.notifyState)
	}
	m.kick(m.kickLease)
}
