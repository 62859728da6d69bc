package mesh

import (
	"github.com/weft-net/weft/mesh/store"
)

// Internal routes (HOST.DOMAIN -> APP) are a signed CRDT of package store,
// replicated like the policy set.

// Routes returns the current route set, sorted.
func (m *Mesh) Routes() []store.Route {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Routes()
}

// MapRoute adds (present) or removes r, signed with this cell's operator
// key (store.ErrNoOperatorKey without one). changed is false when r
// already was in that state.
func (m *Mesh) MapRoute(r store.Route, present bool) (changed bool, err error) {
	if m.cfg.OperatorKey == nil {
		return false, store.ErrNoOperatorKey
	}
	m.mu.Lock()
	stamp := m.st.NextStamp()
	m.mu.Unlock()
	c := store.RouteChange{Route: r, Present: present, Stamp: stamp, Origin: m.cfg.Name}
	store.SignRouteChange(&c, m.cfg.OperatorKey)
	return m.ApplyRouteChange(c)
}

// ApplyRouteChange verifies an operator-signed route change and merges it;
// see ApplyPolicyChange for the rules.
func (m *Mesh) ApplyRouteChange(c store.RouteChange) (changed bool, err error) {
	e, err := m.st.CheckRouteChange(c)
	if err != nil {
		return false, err
	}
	m.mu.Lock()
	changed, err = m.st.MergeRouteChange(c, e)
	m.mu.Unlock()
	if !changed {
		return false, err
	}
	return true, m.localChange(bcast(store.RouteMsg(e)))
}

// RouteStamp is the stamp of the newest change of r this cell knows.
func (m *Mesh) RouteStamp(r store.Route) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.RouteStamp(r)
}
