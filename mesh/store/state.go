package store

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"iter"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weft-net/weft/policy"
)

// MaxNameLen bounds node, app and container names.
const MaxNameLen = 253

// logEvery is the rate limit of repeated warnings.
const logEvery = 5 * time.Second

// Store is the replicated state as this cell knows it. It is guarded by
// its owner's mutex (Mesh.mu); nothing in it locks but the rejection
// counters (see the package doc).
//
// Endpoints: each cell is the only writer of its own entries; per (owner, IP)
// the entry with the highest owner sequence number wins, deletions are
// tombstones pruned after a while (Prune).
//
// Policies: a CRDT keyed by Rule.Key() (EgressRule.Key() for egress rules,
// which are registers of the same set); per key the entry with the highest
// (stamp, origin) wins. Stamps come from a hybrid logical clock, so a later
// change anywhere beats an earlier one and concurrent changes resolve the
// same way on every cell. Removals are tombstones, kept forever.
//
// Leases: each cell's last lease record, written by that cell only (highest
// seq wins); they keep the subnets of cells memberlist has forgotten taken.
// Which lease wins a subnet is package mesh's business.
type Store struct {
	self    string
	now     func() time.Time
	log     *slog.Logger
	trusted map[string]bool // string(ed25519.PublicKey) of trusted operators; read-only

	seq     uint64 // owner sequence of this cell's endpoint and lease records
	clock   uint64 // hybrid logical clock of policy stamps
	eps     map[epKey]EndpointRec
	pols    map[string]PolicyReg // by WireRule.Key(); written by putPolicy only
	polSum  Digest               // of pols (putPolicy keeps it)
	sorted  []policy.Rule        // Rules(), kept until pols changes
	egress  []policy.EgressRule  // EgressRules(), kept until pols changes
	ingress []policy.IngressRule // IngressRules(), kept until pols changes
	routes  map[string]RouteReg  // by Route.key()
	leases  map[string]LeaseRec  // by node name
	rejLog  map[string]time.Time // endpoint owner -> last rejection log

	rejected    atomic.Uint64 // endpoint entries refused
	rejectedPol atomic.Uint64 // signed changes refused
	rejMu       sync.Mutex    // guards rejPolLog
	rejPolLog   time.Time     // last "rejected policy change" log
}

type epKey struct {
	owner string
	ip    netip.Addr
}

// EndpointRec is one endpoint record, as stored and as sent.
type EndpointRec struct {
	Owner   string     `json:"o"`
	IP      netip.Addr `json:"i"`
	App     string     `json:"a,omitempty"`
	Name    string     `json:"n,omitempty"`
	Seq     uint64     `json:"q"`
	Deleted bool       `json:"d,omitempty"`

	deletedAt time.Time // local time the tombstone was stored, for pruning
}

// LeaseRec is a cell's subnet lease. Time (unix ns) orders conflicting
// claims: the older lease wins, ties go to the smaller name.
type LeaseRec struct {
	Node   string       `json:"n"`
	Subnet netip.Prefix `json:"s"`
	Time   int64        `json:"t"`
	Seq    uint64       `json:"q"`
	// Takeover, if not 0, is the lease time of a dead cell's lease of the
	// same subnet that this one replaced: this lease beats that one.
	Takeover int64 `json:"o,omitempty"`
}

// New returns an empty store of cell self that accepts signed changes of
// the trusted operator keys; log receives its warnings.
func New(self string, trusted []ed25519.PublicKey, log *slog.Logger) *Store {
	s := &Store{
		self:    self,
		now:     time.Now,
		log:     log,
		trusted: make(map[string]bool),
		eps:     make(map[epKey]EndpointRec),
		pols:    make(map[string]PolicyReg),
		routes:  make(map[string]RouteReg),
		leases:  make(map[string]LeaseRec),
		rejLog:  make(map[string]time.Time),
	}
	for _, k := range trusted {
		s.trusted[string(k)] = true
	}
	return s
}

// Trusted reports whether pub is a trusted operator key.
func (s *Store) Trusted(pub ed25519.PublicKey) bool { return s.trusted[string(pub)] }

// NumTrusted is the number of trusted operator keys.
func (s *Store) NumTrusted() int { return len(s.trusted) }

// Now is the store's clock (time.Now; tests change it).
func (s *Store) Now() time.Time { return s.now() }

// Seq is the last owner sequence number used or seen.
func (s *Store) Seq() uint64 { return s.seq }

// NextSeq returns a fresh owner sequence number: max(wall clock, last+1),
// so a cell that lost its state dir still outnumbers its earlier life.
func (s *Store) NextSeq() uint64 {
	s.seq = max(uint64(s.now().UnixNano()), s.seq+1)
	return s.seq
}

// ObserveSeq notes an owner sequence number of this cell seen elsewhere.
func (s *Store) ObserveSeq(q uint64) { s.seq = max(s.seq, q) }

// Clock is the hybrid logical clock's last value.
func (s *Store) Clock() uint64 { return s.clock }

// NextStamp ticks the hybrid logical clock.
func (s *Store) NextStamp() uint64 {
	s.clock = max(uint64(s.now().UnixNano()), s.clock+1)
	return s.clock
}

// ObserveStamp moves the clock past a stamp seen.
func (s *Store) ObserveStamp(t uint64) { s.clock = max(s.clock, t) }

// SetLocalEndpoint writes this cell's own entry for ip. It reports false
// (and writes nothing) when the live view would not change.
func (s *Store) SetLocalEndpoint(ip netip.Addr, app, name string, deleted bool) (EndpointRec, bool) {
	k := epKey{s.self, ip}
	have, ok := s.eps[k]
	if deleted && (!ok || have.Deleted) {
		return EndpointRec{}, false
	}
	if !deleted && ok && !have.Deleted && have.App == app && have.Name == name {
		return EndpointRec{}, false
	}
	e := EndpointRec{Owner: s.self, IP: ip, App: app, Name: name, Seq: s.NextSeq(), Deleted: deleted}
	if deleted {
		e.deletedAt = s.now()
	}
	s.eps[k] = e
	return e, true
}

// SetLocalPolicy adds (present) or removes r, signed by this cell's
// operator key. It reports false when r was already in that state.
func (s *Store) SetLocalPolicy(r policy.Rule, present bool, key ed25519.PrivateKey) (PolicyReg, bool) {
	k := r.Key()
	have, ok := s.pols[k]
	if (ok && have.Present) == present {
		return PolicyReg{}, false
	}
	c := PolicyChange{Rule: r, Present: present, Stamp: s.NextStamp(), Origin: s.self}
	SignPolicyChange(&c, key)
	p := c.Reg()
	s.putPolicy(k, p)
	return p, true
}

// putPolicy stores p as the register of key k and keeps the digest.
func (s *Store) putPolicy(k string, p PolicyReg) {
	if have, ok := s.pols[k]; ok {
		s.polSum.toggle(k, have)
	}
	s.pols[k] = p
	s.polSum.toggle(k, p)
	s.sorted, s.egress, s.ingress = nil, nil, nil
}

// DigestBuckets is the number of buckets of a Digest.
const DigestBuckets = 256

// Digest summarises a policy set for anti-entropy (see FullState):
// bucket i is the XOR of the hashes of the registers whose key falls in
// bucket i. Two cells that hold the same registers have the same digest
// whatever order they learnt them in; a bucket that differs names the
// 1/256 of the set to exchange. The hashes are SHA-256, the same on every
// cell (unlike hash/maphash, which is seeded per process), at some 0.2 µs
// a register changed.
type Digest [DigestBuckets]uint64

// toggle adds or removes (XOR) register p of key k.
func (d *Digest) toggle(k string, p PolicyReg) {
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
	d[Bucket(k)] ^= binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// Bucket is the digest bucket of key k.
func Bucket(k string) int {
	sum := sha256.Sum256([]byte(k))
	return int(sum[0])
}

// Digest returns the digest of the policy set.
func (s *Store) Digest() Digest { return s.polSum }

// DifferingBuckets returns the buckets in which digest sum differs from
// this cell's.
func (s *Store) DifferingBuckets(sum []uint64) []int {
	var differ []int
	for i, x := range sum {
		if x != s.polSum[i] {
			differ = append(differ, i)
		}
	}
	return slices.Clip(differ)
}

// PoliciesIn returns the registers whose key falls in a bucket i with
// in[i] set.
func (s *Store) PoliciesIn(in []bool) []PolicyReg {
	var ps []PolicyReg
	for k, p := range s.pols {
		if in[Bucket(k)] {
			ps = append(ps, p)
		}
	}
	return ps
}

// NumPolicies is the number of policy registers, tombstones included.
func (s *Store) NumPolicies() int { return len(s.pols) }

// Stamp returns the stamp of the newest change of the rule of key k this
// cell knows (0 if none).
func (s *Store) Stamp(k string) uint64 { return s.pols[k].Stamp }

// Rules returns the present rules, sorted. The slice is shared until the
// next change: sorting 100k rules takes 60-80 ms, and the agent asks for
// them on every state change and every status or metrics request.
func (s *Store) Rules() []policy.Rule {
	if s.sorted != nil {
		return s.sorted
	}
	out := make([]policy.Rule, 0, len(s.pols))
	for _, p := range s.pols {
		if p.Present && !p.Rule.IsEgress() && !p.Rule.IsIngress() {
			out = append(out, p.Rule.rule())
		}
	}
	policy.SortRules(out)
	s.sorted = slices.Clip(out)
	return s.sorted
}

// EgressRules returns the present egress rules, sorted. The slice is
// shared until the next change.
func (s *Store) EgressRules() []policy.EgressRule {
	if s.egress != nil {
		return s.egress
	}
	out := []policy.EgressRule{}
	for _, p := range s.pols {
		if p.Present && p.Rule.IsEgress() {
			out = append(out, p.Rule.egressRule())
		}
	}
	policy.SortEgressRules(out)
	s.egress = slices.Clip(out)
	return s.egress
}

// IngressRules returns the present ingress rules, sorted. The slice is
// shared until the next change.
func (s *Store) IngressRules() []policy.IngressRule {
	if s.ingress != nil {
		return s.ingress
	}
	out := []policy.IngressRule{}
	for _, p := range s.pols {
		if p.Present && p.Rule.IsIngress() {
			out = append(out, p.Rule.ingressRule())
		}
	}
	policy.SortIngressRules(out)
	s.ingress = slices.Clip(out)
	return s.ingress
}

// HasLocalEndpoints reports whether this cell has a live endpoint.
func (s *Store) HasLocalEndpoints() bool {
	for k, e := range s.eps {
		if k.owner == s.self && !e.Deleted {
			return true
		}
	}
	return false
}

// LiveEndpoints yields every live endpoint record, of every owner.
func (s *Store) LiveEndpoints() iter.Seq[EndpointRec] {
	return func(yield func(EndpointRec) bool) {
		for _, e := range s.eps {
			if !e.Deleted && !yield(e) {
				return
			}
		}
	}
}

// Endpoint returns the record of owner's ip.
func (s *Store) Endpoint(owner string, ip netip.Addr) (EndpointRec, bool) {
	e, ok := s.eps[epKey{owner, ip}]
	return e, ok
}

// NumEndpoints is the number of endpoint records, tombstones included.
func (s *Store) NumEndpoints() int { return len(s.eps) }

// Prune drops endpoint tombstones stored before t.
func (s *Store) Prune(t time.Time) {
	for k, e := range s.eps {
		if e.Deleted && e.deletedAt.Before(t) {
			delete(s.eps, k)
		}
	}
}

// Lease returns the last lease record of node.
func (s *Store) Lease(node string) (LeaseRec, bool) {
	r, ok := s.leases[node]
	return r, ok
}

// PutLease stores r as its node's lease record. Whether it is newer is
// the caller's business (package mesh's lease merge).
func (s *Store) PutLease(r LeaseRec) { s.leases[r.Node] = r }

// Leases yields every lease record, by node name.
func (s *Store) Leases() iter.Seq2[string, LeaseRec] {
	return func(yield func(string, LeaseRec) bool) {
		for n, r := range s.leases {
			if !yield(n, r) {
				return
			}
		}
	}
}

// NumLeases is the number of lease records.
func (s *Store) NumLeases() int { return len(s.leases) }
