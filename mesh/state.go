package mesh

import (
	"cmp"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/weft-net/weft/policy"
)

// state is the replicated state as this cell knows it. It is guarded by
// Mesh.mu; nothing in it locks.
//
// Endpoints: each cell is the only writer of its own entries; per (owner, IP)
// the entry with the highest owner sequence number wins, deletions are
// tombstones pruned after tombstoneTTL.
//
// Policies: a CRDT keyed by Rule.Key() (EgressRule.Key() for egress rules,
// which are registers of the same set); per key the entry with the highest
// (stamp, origin) wins. Stamps come from a hybrid logical clock, so a later
// change anywhere beats an earlier one and concurrent changes resolve the
// same way on every cell. Removals are tombstones, kept forever.
//
// Leases: each cell's last lease record, written by that cell only (highest
// seq wins); they keep the subnets of cells memberlist has forgotten taken.
type state struct {
	self    string
	now     func() time.Time
	seq     uint64 // owner sequence of this cell's endpoint and lease records
	clock   uint64 // hybrid logical clock of policy stamps
	eps     map[epKey]epEntry
	pols    map[string]polEntry   // by wireRule.key(); written by putPolicy only
	polSum  polDigest             // of pols (putPolicy keeps it)
	sorted  []policy.Rule         // rules(), kept until pols changes
	egress  []policy.EgressRule   // egressRules(), kept until pols changes
	ingress []policy.IngressRule  // ingressRules(), kept until pols changes
	routes  map[string]routeEntry // by Route.key()
	leases  map[string]leaseRec   // by node name
}

type epKey struct {
	owner string
	ip    netip.Addr
}

// epEntry is one endpoint record, as stored and as sent.
type epEntry struct {
	Owner   string     `json:"o"`
	IP      netip.Addr `json:"i"`
	App     string     `json:"a,omitempty"`
	Name    string     `json:"n,omitempty"`
	Seq     uint64     `json:"q"`
	Deleted bool       `json:"d,omitempty"`

	deletedAt time.Time // local time the tombstone was stored, for pruning
}

// wireRule is policy.Rule, policy.EgressRule or policy.IngressRule in the
// replicated state, independent of any JSON form the policy package may
// give them. An egress rule has Lo and Hi (its destination range) and no
// Dst; Src is its app. An ingress rule has In set, Src its app, and Lo and
// Hi its source range (none: from the cell hosts).
type wireRule struct {
	Src   string     `json:"s"`
	Dst   string     `json:"d,omitempty"`
	Proto uint8      `json:"p"`
	Start uint16     `json:"a"`
	End   uint16     `json:"b"`
	Lo    netip.Addr `json:"l,omitzero"`
	Hi    netip.Addr `json:"h,omitzero"`
	In    bool       `json:"i,omitempty"`
}

func toWire(r policy.Rule) wireRule {
	return wireRule{Src: r.Source, Dst: r.Destination, Proto: uint8(r.Protocol), Start: r.Ports.Start, End: r.Ports.End}
}

func toWireEgress(r policy.EgressRule) wireRule {
	return wireRule{Src: r.App, Proto: uint8(r.Protocol), Start: r.Ports.Start, End: r.Ports.End, Lo: r.Start, Hi: r.End}
}

func toWireIngress(r policy.IngressRule) wireRule {
	return wireRule{Src: r.App, Proto: uint8(r.Protocol), Start: r.Ports.Start, End: r.Ports.End, Lo: r.Start, Hi: r.End, In: true}
}

// isEgress reports whether w is an egress rule.
func (w wireRule) isEgress() bool { return !w.In && (w.Lo.IsValid() || w.Hi.IsValid()) }

// isIngress reports whether w is an ingress rule.
func (w wireRule) isIngress() bool { return w.In }

func (w wireRule) egressRule() policy.EgressRule {
	return policy.EgressRule{App: w.Src, Start: w.Lo, End: w.Hi, Protocol: policy.Protocol(w.Proto),
		Ports: policy.PortRange{Start: w.Start, End: w.End}}
}

func (w wireRule) ingressRule() policy.IngressRule {
	return policy.IngressRule{App: w.Src, FromHost: !w.Lo.IsValid() && !w.Hi.IsValid(), Start: w.Lo, End: w.Hi,
		Protocol: policy.Protocol(w.Proto), Ports: policy.PortRange{Start: w.Start, End: w.End}}
}

// key is the register's key: Rule.Key(), EgressRule.Key() or
// IngressRule.Key().
func (w wireRule) key() string {
	switch {
	case w.isIngress():
		return w.ingressRule().Key()
	case w.isEgress():
		return w.egressRule().Key()
	}
	return w.rule().Key()
}

// validate checks w as Rule.Validate, EgressRule.Validate or
// IngressRule.Validate does; egress and ingress rules are checked against
// overlay when it is valid.
func (w wireRule) validate(overlay netip.Prefix) error {
	switch {
	case (w.isEgress() || w.isIngress()) && w.Dst != "":
		return errors.New("egress or ingress rule with a destination app")
	case w.isIngress():
		return w.ingressRule().Validate(overlay)
	case w.isEgress():
		return w.egressRule().Validate(overlay)
	}
	return w.rule().Validate()
}

// String names the rule for errors and logs.
func (w wireRule) String() string {
	switch {
	case w.isIngress():
		return "ingress rule " + w.ingressRule().String()
	case w.isEgress():
		return "egress rule " + w.egressRule().String()
	}
	return w.rule().String()
}

func (w wireRule) rule() policy.Rule {
	return policy.Rule{
		Source:      w.Src,
		Destination: w.Dst,
		Protocol:    policy.Protocol(w.Proto),
		Ports:       policy.PortRange{Start: w.Start, End: w.End},
	}
}

// polEntry is one policy CRDT register.
type polEntry struct {
	Rule    wireRule `json:"r"`
	Present bool     `json:"p,omitempty"`
	Stamp   uint64   `json:"t"`
	Origin  string   `json:"o"`
	Signer  []byte   `json:"k,omitempty"` // operator ed25519 public key
	Sig     []byte   `json:"g,omitempty"` // its signature (operator.go)
}

// newer reports whether p wins over q.
func (p polEntry) newer(q polEntry) bool {
	if p.Stamp != q.Stamp {
		return p.Stamp > q.Stamp
	}
	return p.Origin > q.Origin
}

// leaseRec is a cell's subnet lease. Time (unix ns) orders conflicting
// claims: the older lease wins, ties go to the smaller name.
type leaseRec struct {
	Node   string       `json:"n"`
	Subnet netip.Prefix `json:"s"`
	Time   int64        `json:"t"`
	Seq    uint64       `json:"q"`
	// Takeover, if not 0, is the lease time of a dead cell's lease of the
	// same subnet that this one replaced: this lease beats that one.
	Takeover int64 `json:"o,omitempty"`
}

func newState(self string) state {
	return state{
		self:   self,
		now:    time.Now,
		eps:    make(map[epKey]epEntry),
		pols:   make(map[string]polEntry),
		routes: make(map[string]routeEntry),
		leases: make(map[string]leaseRec),
	}
}

// nextSeq returns a fresh owner sequence number: max(wall clock, last+1),
// so a cell that lost its state dir still outnumbers its earlier life.
func (s *state) nextSeq() uint64 {
	s.seq = max(uint64(s.now().UnixNano()), s.seq+1)
	return s.seq
}

func (s *state) observeSeq(q uint64) { s.seq = max(s.seq, q) }

// nextStamp ticks the hybrid logical clock.
func (s *state) nextStamp() uint64 {
	s.clock = max(uint64(s.now().UnixNano()), s.clock+1)
	return s.clock
}

func (s *state) observeStamp(t uint64) { s.clock = max(s.clock, t) }

// setLocalEndpoint writes this cell's own entry for ip. It reports false
// (and writes nothing) when the live view would not change.
func (s *state) setLocalEndpoint(ip netip.Addr, app, name string, deleted bool) (epEntry, bool) {
	k := epKey{s.self, ip}
	have, ok := s.eps[k]
	if deleted && (!ok || have.Deleted) {
		return epEntry{}, false
	}
	if !deleted && ok && !have.Deleted && have.App == app && have.Name == name {
		return epEntry{}, false
	}
	e := epEntry{Owner: s.self, IP: ip, App: app, Name: name, Seq: s.nextSeq(), Deleted: deleted}
	if deleted {
		e.deletedAt = s.now()
	}
	s.eps[k] = e
	return e, true
}

// setLocalPolicy adds (present) or removes r, signed by this cell's
// operator key. It reports false when r was already in that state.
func (s *state) setLocalPolicy(r policy.Rule, present bool, key ed25519.PrivateKey) (polEntry, bool) {
	k := r.Key()
	have, ok := s.pols[k]
	if (ok && have.Present) == present {
		return polEntry{}, false
	}
	c := PolicyChange{Rule: r, Present: present, Stamp: s.nextStamp(), Origin: s.self}
	SignPolicyChange(&c, key)
	p := c.entry()
	s.putPolicy(k, p)
	return p, true
}

// putPolicy stores p as the register of key k and keeps the digest.
func (s *state) putPolicy(k string, p polEntry) {
	if have, ok := s.pols[k]; ok {
		s.polSum.toggle(k, have)
	}
	s.pols[k] = p
	s.polSum.toggle(k, p)
	s.sorted, s.egress, s.ingress = nil, nil, nil
}

// polBuckets is the number of buckets of a polDigest.
const polBuckets = 256

// polDigest summarises a policy set for anti-entropy (see fullState):
// bucket i is the XOR of the hashes of the registers whose key falls in
// bucket i. Two cells that hold the same registers have the same digest
// whatever order they learnt them in; a bucket that differs names the
// 1/256 of the set to exchange. The hashes are SHA-256, the same on every
// cell (unlike hash/maphash, which is seeded per process), at some 0.2 µs
// a register changed.
type polDigest [polBuckets]uint64

// toggle adds or removes (XOR) register p of key k.
func (d *polDigest) toggle(k string, p polEntry) {
	h := sha256.New()
	h.Write([]byte(k))
	var b [17]byte
	binary.BigEndian.PutUint64(b[:8], p.Stamp)
	if p.Present {
		b[8] = 1
	}
	binary.BigEndian.PutUint64(b[9:], uint64(len(p.Origin)))
	h.Write(b[:])
	h.Write([]byte(p.Origin))
	var sum [sha256.Size]byte
	d[polBucket(k)] ^= binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// polBucket is the digest bucket of key k.
func polBucket(k string) int {
	sum := sha256.Sum256([]byte(k))
	return int(sum[0])
}

// rules returns the present rules, sorted. The slice is shared until the
// next change: sorting 100k rules takes 60-80 ms, and the agent asks for
// them on every state change and every status or metrics request.
func (s *state) rules() []policy.Rule {
	if s.sorted != nil {
		return s.sorted
	}
	out := make([]policy.Rule, 0, len(s.pols))
	for _, p := range s.pols {
		if p.Present && !p.Rule.isEgress() && !p.Rule.isIngress() {
			out = append(out, p.Rule.rule())
		}
	}
	policy.SortRules(out)
	s.sorted = slices.Clip(out)
	return s.sorted
}

// egressRules returns the present egress rules, sorted. The slice is
// shared until the next change.
func (s *state) egressRules() []policy.EgressRule {
	if s.egress != nil {
		return s.egress
	}
	out := []policy.EgressRule{}
	for _, p := range s.pols {
		if p.Present && p.Rule.isEgress() {
			out = append(out, p.Rule.egressRule())
		}
	}
	policy.SortEgressRules(out)
	s.egress = slices.Clip(out)
	return s.egress
}

// ingressRules returns the present ingress rules, sorted. The slice is
// shared until the next change.
func (s *state) ingressRules() []policy.IngressRule {
	if s.ingress != nil {
		return s.ingress
	}
	out := []policy.IngressRule{}
	for _, p := range s.pols {
		if p.Present && p.Rule.isIngress() {
			out = append(out, p.Rule.ingressRule())
		}
	}
	policy.SortIngressRules(out)
	s.ingress = slices.Clip(out)
	return s.ingress
}

func (s *state) hasLocalEndpoints() bool {
	for k, e := range s.eps {
		if k.owner == s.self && !e.Deleted {
			return true
		}
	}
	return false
}

// prune drops endpoint tombstones stored before t.
func (s *state) prune(t time.Time) {
	for k, e := range s.eps {
		if e.Deleted && e.deletedAt.Before(t) {
			delete(s.eps, k)
		}
	}
}

// mergeResult says what applying remote data did.
type mergeResult struct {
	visible bool         // Endpoints() or Policies() may have changed
	stored  bool         // state.json may be stale
	lease   bool         // lease claims changed: re-check our lease
	keyring bool         // the keyring changed: persist it
	out     []*broadcast // to queue (relayed news, corrections of our own entries)
}

func (r *mergeResult) send(b *broadcast) { r.out = append(r.out, b) }

// mergeEndpointLocked applies an endpoint record from a peer. With relay, a
// record that was news is queued for gossip again.
func (m *Mesh) mergeEndpointLocked(e epEntry, relay bool, res *mergeResult) {
	if e.Owner == "" || len(e.Owner) > maxNameLen || !e.IP.IsValid() ||
		len(e.App) > maxNameLen || len(e.Name) > maxNameLen || (!e.Deleted && e.App == "") {
		return
	}
	e.IP = e.IP.Unmap()
	now := m.st.now()
	if e.Deleted {
		e.App, e.Name, e.deletedAt = "", "", now
	}
	k := epKey{e.Owner, e.IP}
	have, ok := m.st.eps[k]
	if e.Owner == m.cfg.Name {
		m.st.observeSeq(e.Seq)
		if ok && have.Seq >= e.Seq {
			return
		}
		res.stored = true
		switch {
		case ok: // a peer has a newer record of ours than we do: ours wins
			have.Seq = m.st.nextSeq()
			m.st.eps[k] = have
			res.send(endpointBroadcast(have))
		case e.Deleted:
			m.st.eps[k] = e
		default: // live entry from an earlier life of this cell
			t := epEntry{Owner: e.Owner, IP: e.IP, Seq: m.st.nextSeq(), Deleted: true, deletedAt: now}
			m.st.eps[k] = t
			res.send(endpointBroadcast(t))
		}
		return
	}
	if ok && have.Seq >= e.Seq {
		return
	}
	if !e.Deleted {
		if sub, known := m.ownerSubnetLocked(e.Owner); known && !sub.Contains(e.IP) {
			m.rejectLocked(e, sub)
			return
		}
	}
	m.st.eps[k] = e
	wasLive := ok && !have.Deleted
	if wasLive != !e.Deleted || (!e.Deleted && (have.App != e.App || have.Name != e.Name)) {
		res.visible = true
	}
	if relay {
		res.send(endpointBroadcast(e))
	}
}

func (m *Mesh) rejectLocked(e epEntry, sub netip.Prefix) {
	m.rejected.Add(1)
	now := time.Now()
	if now.Sub(m.rejectLog[e.Owner]) < logEvery {
		return
	}
	m.rejectLog[e.Owner] = now
	m.log.Warn("rejected endpoint outside its owner's subnet",
		"owner", e.Owner, "ip", e.IP, "app", e.App, "owner_subnet", sub, "rejected_total", m.rejected.Load())
}

// expireOwnerLocked applies an owner's authoritative view of its own
// entries (from its push/pull state): our live entries of that owner that
// it no longer lists, and that are not newer than its sequence, are gone.
func (m *Mesh) expireOwnerLocked(owner string, seq uint64, listed map[netip.Addr]bool, res *mergeResult) {
	if owner == m.cfg.Name {
		return
	}
	for k, e := range m.st.eps {
		if k.owner != owner || e.Deleted || listed[k.ip] || e.Seq > seq {
			continue
		}
		m.st.eps[k] = epEntry{Owner: owner, IP: k.ip, Seq: seq, Deleted: true, deletedAt: m.st.now()}
		res.visible, res.stored = true, true
	}
}

// mergePolicyLocked applies a policy register from a peer and reports
// whether it was news (stored); err says why its signature was refused
// (counted and logged).
func (m *Mesh) mergePolicyLocked(p polEntry, relay bool, res *mergeResult) (news bool, err error) {
	if p.wellFormed() != nil {
		return false, nil
	}
	k := p.Rule.key()
	have, ok := m.st.pols[k]
	if ok && !p.newer(have) {
		return false, nil
	}
	// Verified only when it would win: a register we hold already was
	// verified when it was stored.
	if err := m.verifyPolicy(p); err != nil {
		m.rejectSigned("policy change", p.Origin, err)
		return false, err
	}
	m.st.observeStamp(p.Stamp)
	m.st.putPolicy(k, p)
	res.stored = true
	if (ok && have.Present) != p.Present {
		res.visible = true
	}
	if relay {
		res.send(policyBroadcast(p))
	}
	return true, nil
}

// mergePoliciesLocked merges the registers of one message from a peer and
// returns those that were news. It stops at the first register whose
// signature is wrong (a trusted signer, an invalid signature): a cell only
// ever sends registers it verified, so that message is forged, and each
// check costs an ed25519 verification. The rest count as refused.
func (m *Mesh) mergePoliciesLocked(ps []polEntry, res *mergeResult) []polEntry {
	var news []polEntry
	for i, p := range ps {
		ok, err := m.mergePolicyLocked(p, false, res)
		if errors.Is(err, errBadSignature) {
			m.rejectedPol.Add(uint64(len(ps) - i - 1))
			break
		}
		if ok {
			news = append(news, p)
		}
	}
	return news
}

// mergeLeaseLocked applies a lease record from a peer.
func (m *Mesh) mergeLeaseLocked(r leaseRec, relay bool, res *mergeResult) {
	if r.Node == "" || len(r.Node) > maxNameLen || !m.validSubnet(r.Subnet) {
		return
	}
	have, ok := m.st.leases[r.Node]
	if r.Node == m.cfg.Name {
		m.st.observeSeq(r.Seq)
		if ok && have.Seq >= r.Seq {
			return
		}
		res.stored = true
		if m.lease.Subnet.IsValid() { // ours wins: announce it again
			m.lease.Seq = m.st.nextSeq()
			m.st.leases[r.Node] = m.lease
			res.send(leaseBroadcast(m.lease))
			return
		}
		m.st.leases[r.Node] = r // from an earlier life: a hint for the next pick
		res.lease = true
		return
	}
	if ok && have.Seq >= r.Seq {
		return
	}
	m.st.leases[r.Node] = r
	if _, seen := m.recSeen[r.Node]; !seen {
		m.recSeen[r.Node] = time.Now()
	}
	res.stored, res.lease = true, true
	if relay {
		res.send(leaseBroadcast(r))
	}
}

// ownerSubnetLocked is the subnet owner currently holds: from its node
// metadata, else from its last lease record.
func (m *Mesh) ownerSubnetLocked(owner string) (netip.Prefix, bool) {
	if owner == m.cfg.Name {
		return m.lease.Subnet, m.lease.Subnet.IsValid()
	}
	if mb := m.nodes[owner]; mb != nil && mb.meta.Subnet.IsValid() {
		return mb.meta.Subnet, true
	}
	if r, ok := m.st.leases[owner]; ok {
		return r.Subnet, true
	}
	return netip.Prefix{}, false
}

func (m *Mesh) endpointsLocked() []Endpoint {
	out := make([]Endpoint, 0, len(m.st.eps))
	for k, e := range m.st.eps {
		if e.Deleted {
			continue
		}
		if sub, ok := m.ownerSubnetLocked(k.owner); !ok || !sub.Contains(k.ip) {
			continue
		}
		out = append(out, Endpoint{IP: e.IP, App: e.App, Name: e.Name, Cell: e.Owner})
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Cell, b.Cell))
	})
	return out
}
