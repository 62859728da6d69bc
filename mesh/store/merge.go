package store

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Merging what peers send: each merge applies one record or register by
// the rules of its CRDT (see Store) and says in a Result what changed and
// which messages to gossip on.

// Msg is a gossip message to queue: a newer message of the same Name
// replaces a queued one.
type Msg struct {
	Name string
	Body []byte
}

// Result says what applying remote data did.
type Result struct {
	Visible bool  // Endpoints() or Policies() may have changed
	Stored  bool  // state.json may be stale
	Lease   bool  // lease claims changed: re-check our lease
	Keyring bool  // the keyring changed: persist it
	Out     []Msg // to queue (relayed news, corrections of our own entries)
}

// Send adds m to the messages to queue.
func (r *Result) Send(m Msg) { r.Out = append(r.Out, m) }

// MergeEndpoint applies an endpoint record from a peer. With relay, a
// record that was news is queued for gossip again. subnetOf says which
// subnet an owner holds now (false: none known); a live record outside
// it is refused.
func (s *Store) MergeEndpoint(e EndpointRec, relay bool, res *Result, subnetOf func(owner string) (netip.Prefix, bool)) {
	if e.Owner == "" || len(e.Owner) > MaxNameLen || !e.IP.IsValid() ||
		len(e.App) > MaxNameLen || len(e.Name) > MaxNameLen || (!e.Deleted && e.App == "") {
		return
	}
	e.IP = e.IP.Unmap()
	now := s.now()
	if e.Deleted {
		e.App, e.Name, e.deletedAt = "", "", now
	}
	k := epKey{e.Owner, e.IP}
	have, ok := s.eps[k]
	if e.Owner == s.self {
		s.ObserveSeq(e.Seq)
		if ok && have.Seq >= e.Seq {
			return
		}
		res.Stored = true
		switch {
		case ok: // a peer has a newer record of ours than we do: ours wins
			have.Seq = s.NextSeq()
			s.eps[k] = have
			res.Send(EndpointMsg(have))
		case e.Deleted:
			s.eps[k] = e
		default: // live entry from an earlier life of this cell
			t := EndpointRec{Owner: e.Owner, IP: e.IP, Seq: s.NextSeq(), Deleted: true, deletedAt: now}
			s.eps[k] = t
			res.Send(EndpointMsg(t))
		}
		return
	}
	if ok && have.Seq >= e.Seq {
		return
	}
	if !e.Deleted {
		if sub, known := subnetOf(e.Owner); known && !sub.Contains(e.IP) {
			s.rejectEndpoint(e, sub)
			return
		}
	}
	s.eps[k] = e
	wasLive := ok && !have.Deleted
	if wasLive != !e.Deleted || (!e.Deleted && (have.App != e.App || have.Name != e.Name)) {
		res.Visible = true
	}
	if relay {
		res.Send(EndpointMsg(e))
	}
}

func (s *Store) rejectEndpoint(e EndpointRec, sub netip.Prefix) {
	s.rejected.Add(1)
	now := time.Now()
	if now.Sub(s.rejLog[e.Owner]) < logEvery {
		return
	}
	s.rejLog[e.Owner] = now
	s.log.Warn("rejected endpoint outside its owner's subnet",
		"owner", e.Owner, "ip", e.IP, "app", e.App, "owner_subnet", sub, "rejected_total", s.rejected.Load())
}

// CountRejectedEndpoint counts an endpoint record refused as not well
// formed. No lock needed.
func (s *Store) CountRejectedEndpoint() { s.rejected.Add(1) }

// RejectedEndpoints counts endpoint entries received from peers and
// rejected: outside the owner's subnet, or not well formed. No lock
// needed.
func (s *Store) RejectedEndpoints() uint64 { return s.rejected.Load() }

// ExpireOwner applies an owner's authoritative view of its own entries
// (from its push/pull state): our live entries of that owner that it no
// longer lists, and that are not newer than its sequence, are gone.
func (s *Store) ExpireOwner(owner string, seq uint64, listed map[netip.Addr]bool, res *Result) {
	if owner == s.self {
		return
	}
	for k, e := range s.eps {
		if k.owner != owner || e.Deleted || listed[k.ip] || e.Seq > seq {
			continue
		}
		s.eps[k] = EndpointRec{Owner: owner, IP: k.ip, Seq: seq, Deleted: true, deletedAt: s.now()}
		res.Visible, res.Stored = true, true
	}
}

// MergePolicy applies a policy register from a peer and reports whether
// it was news (stored); err says why its signature was refused (counted
// and logged).
func (s *Store) MergePolicy(p PolicyReg, relay bool, res *Result) (news bool, err error) {
	if p.WellFormed() != nil {
		return false, nil
	}
	k := p.Rule.Key()
	have, ok := s.pols[k]
	if ok && !p.newer(have) {
		return false, nil
	}
	// Verified only when it would win: a register we hold already was
	// verified when it was stored.
	if err := s.verifyPolicy(p); err != nil {
		s.RejectSigned("policy change", p.Origin, err)
		return false, err
	}
	s.ObserveStamp(p.Stamp)
	s.putPolicy(k, p)
	res.Stored = true
	if (ok && have.Present) != p.Present {
		res.Visible = true
	}
	if relay {
		res.Send(PolicyMsg(p))
	}
	return true, nil
}

// MergePolicies merges the registers of one message from a peer and
// returns those that were news. It stops at the first register whose
// signature is wrong (a trusted signer, an invalid signature): a cell only
// ever sends registers it verified, so that message is forged, and each
// check costs an ed25519 verification. The rest count as refused.
func (s *Store) MergePolicies(ps []PolicyReg, res *Result) []PolicyReg {
	var news []PolicyReg
	for i, p := range ps {
		ok, err := s.MergePolicy(p, false, res)
		if errors.Is(err, errBadSignature) {
			s.rejectedPol.Add(uint64(len(ps) - i - 1))
			break
		}
		if ok {
			news = append(news, p)
		}
	}
	return news
}

// State returns the push/pull state of this store (FullState; the caller
// adds the keyring operations): every lease record and endpoint record,
// the policy digest, and the policy registers too when join and the set
// holds at most listMax of them.
func (s *Store) State(join bool, listMax int) FullState {
	fs := FullState{
		From:      s.self,
		Seq:       s.seq,
		Leases:    make([]LeaseRec, 0, len(s.leases)),
		Endpoints: make([]EndpointRec, 0, len(s.eps)),
		Policies:  []PolicyReg{},
	}
	for _, r := range s.leases {
		fs.Leases = append(fs.Leases, r)
	}
	for _, e := range s.eps {
		fs.Endpoints = append(fs.Endpoints, e)
	}
	fs.PolSum = slices.Clone(s.polSum[:])
	if fs.PolList = join && len(s.pols) <= listMax; fs.PolList {
		fs.Policies = slices.Grow(fs.Policies, len(s.pols))
		for _, p := range s.pols {
			fs.Policies = append(fs.Policies, p)
		}
	}
	for _, e := range s.routes {
		fs.Routes = append(fs.Routes, e)
	}
	return fs
}

// Check reports the first record the store holds that a peer could not
// validly have sent it: not well formed, stored under another key than
// its own, a lease record whose subnet validSubnet refuses, or a signed
// register that no trusted key verifies. The fuzz tests' oracle.
func (s *Store) Check(validSubnet func(netip.Prefix) bool) error {
	for k, p := range s.pols {
		if err := p.WellFormed(); err != nil || p.Rule.Key() != k {
			return fmt.Errorf("a policy register that is not well formed: %+v: %v", p, err)
		}
		if err := s.verifyPolicy(p); err != nil {
			return fmt.Errorf("an unverified policy register: %+v: %v", p, err)
		}
	}
	for k, e := range s.routes {
		if err := e.WellFormed(); err != nil || e.Route().key() != k {
			return fmt.Errorf("a route that is not well formed: %+v: %v", e, err)
		}
		if err := s.VerifyRoute(e); err != nil {
			return fmt.Errorf("an unverified route: %+v: %v", e, err)
		}
	}
	for k, e := range s.eps {
		if err := e.WellFormed(); err != nil || k.owner != e.Owner || k.ip != e.IP || e.IP != e.IP.Unmap() {
			return fmt.Errorf("an endpoint that is not well formed: %+v: %v", e, err)
		}
	}
	for n, r := range s.leases {
		if r.Node != n || !validSubnet(r.Subnet) {
			return fmt.Errorf("a lease record that is not valid: %+v", r)
		}
	}
	return nil
}
