package mesh

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/weft-net/weft/mesh/store"
)

// The replicated state lives in package store (Mesh.st, guarded by mu):
// its records, their merge rules, signatures, encoding and state.json.
// What it needs of membership and leases is here: which subnet an owner
// holds (its endpoints outside it are refused and not served), and the
// merge of lease records, which defends this cell's own lease.

// bcast is store message msg as a gossip broadcast.
func bcast(msg store.Msg) *broadcast { return &broadcast{name: msg.Name, msg: msg.Body} }

// mergeEndpointLocked applies an endpoint record from a peer
// (store.MergeEndpoint): a live record outside the subnet its owner holds
// is refused.
func (m *Mesh) mergeEndpointLocked(e store.EndpointRec, relay bool, res *store.Result) {
	m.st.MergeEndpoint(e, relay, res, m.ownerSubnetLocked)
}

// mergeLeaseLocked applies a lease record from a peer.
func (m *Mesh) mergeLeaseLocked(r store.LeaseRec, relay bool, res *store.Result) {
	if r.Node == "" || len(r.Node) > maxNameLen || !m.pool().Valid(r.Subnet) {
		return
	}
	have, ok := m.st.Lease(r.Node)
	if r.Node == m.cfg.Name {
		m.st.ObserveSeq(r.Seq)
		if ok && have.Seq >= r.Seq {
			return
		}
		res.Stored = true
		if m.lease.Subnet.IsValid() { // ours wins: announce it again
			m.lease.Seq = m.st.NextSeq()
			m.st.PutLease(m.lease)
			res.Send(store.LeaseMsg(m.lease))
			return
		}
		m.st.PutLease(r) // from an earlier life: a hint for the next pick
		res.Lease = true
		return
	}
	if ok && have.Seq >= r.Seq {
		return
	}
	m.st.PutLease(r)
	if _, seen := m.recSeen[r.Node]; !seen {
		m.recSeen[r.Node] = time.Now()
	}
	res.Stored, res.Lease = true, true
	if relay {
		res.Send(store.LeaseMsg(r))
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
	if r, ok := m.st.Lease(owner); ok {
		return r.Subnet, true
	}
	return netip.Prefix{}, false
}

func (m *Mesh) endpointsLocked() []Endpoint {
	out := make([]Endpoint, 0, m.st.NumEndpoints())
	for e := range m.st.LiveEndpoints() {
		if sub, ok := m.ownerSubnetLocked(e.Owner); !ok || !sub.Contains(e.IP) {
			continue
		}
		out = append(out, Endpoint{IP: e.IP, App: e.App, Name: e.Name, Cell: e.Owner})
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Cell, b.Cell))
	})
	return out
}
