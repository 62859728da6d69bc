package mesh

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/weft-net/weft/policy"
)

// Internal routes: HOST.DOMAIN -> APP, as `cf map-route APP DOMAIN
// --hostname HOST`. The set is replicated like the policy set: a register
// per route (a route may map to several apps, so the app is part of the
// key) with a present flag, a hybrid-logical-clock stamp and the origin,
// signed by an operator key; the higher (stamp, origin) wins. Changes are
// gossip broadcasts, the full set travels in push/pull and state.json.

// Route maps Host.Domain to the instances of App.
type Route struct {
	Host   string
	Domain string
	App    string
}

func (r Route) key() string { return strings.ToLower(r.Host+"."+r.Domain) + ">" + r.App }

func (r Route) String() string { return r.Host + "." + r.Domain + " -> " + r.App }

var (
	dnsLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
)

// Validate checks that r names a DNS label in a DNS domain and an app.
func (r Route) Validate() error {
	if !dnsLabel.MatchString(r.Host) {
		return fmt.Errorf("invalid hostname %q: one DNS label (letters, digits, '-')", r.Host)
	}
	labels := strings.Split(strings.TrimSuffix(r.Domain, "."), ".")
	for _, l := range labels {
		if !dnsLabel.MatchString(l) {
			return fmt.Errorf("invalid domain %q", r.Domain)
		}
	}
	if !policy.ValidAppName(r.App) {
		return fmt.Errorf("invalid app name %q", r.App)
	}
	return nil
}

// msgRoute is the gossip message of one route register.
const msgRoute byte = 'r'

// RouteChange is an operator-signed change of the route set.
type RouteChange struct {
	Route   Route
	Present bool
	Stamp   uint64
	Origin  string
	Signer  ed25519.PublicKey
	Sig     []byte
}

// routeEntry is one route CRDT register (wire and state.json form).
type routeEntry struct {
	Host    string `json:"h"`
	Domain  string `json:"d"`
	App     string `json:"a"`
	Present bool   `json:"p,omitempty"`
	Stamp   uint64 `json:"t"`
	Origin  string `json:"o"`
	Signer  []byte `json:"k,omitempty"`
	Sig     []byte `json:"g,omitempty"`
}

func (e routeEntry) route() Route { return Route{Host: e.Host, Domain: e.Domain, App: e.App} }

func (e routeEntry) newer(q routeEntry) bool {
	if e.Stamp != q.Stamp {
		return e.Stamp > q.Stamp
	}
	return e.Origin > q.Origin
}

func (c RouteChange) entry() routeEntry {
	return routeEntry{Host: c.Route.Host, Domain: c.Route.Domain, App: c.Route.App, Present: c.Present,
		Stamp: c.Stamp, Origin: c.Origin, Signer: c.Signer, Sig: c.Sig}
}

// routeSignedBytes is what an operator signs for a route change.
func routeSignedBytes(e routeEntry) []byte {
	b := make([]byte, 0, 64+len(e.Host)+len(e.Domain)+len(e.App)+len(e.Origin))
	b = append(b, "weft route change v1\x00"...)
	b = appendStr(b, e.Host)
	b = appendStr(b, e.Domain)
	b = appendStr(b, e.App)
	if e.Present {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint64(b, e.Stamp)
	return appendStr(b, e.Origin)
}

// SignRouteChange signs c with priv and sets c.Signer and c.Sig.
func SignRouteChange(c *RouteChange, priv ed25519.PrivateKey) {
	c.Signer = priv.Public().(ed25519.PublicKey)
	c.Sig = ed25519.Sign(priv, routeSignedBytes(c.entry()))
}

func routeBroadcast(e routeEntry) *broadcast {
	return &broadcast{name: "r/" + e.route().key(), msg: encode(msgRoute, e)}
}

// Routes returns the current route set, sorted.
func (m *Mesh) Routes() []Route {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Route, 0, len(m.st.routes))
	for _, e := range m.st.routes {
		if e.Present {
			out = append(out, e.route())
		}
	}
	slices.SortFunc(out, func(a, b Route) int { return strings.Compare(a.key(), b.key()) })
	return out
}

// MapRoute adds (present) or removes r, signed with this cell's operator
// key (ErrNoOperatorKey without one). changed is false when r already was
// in that state.
func (m *Mesh) MapRoute(r Route, present bool) (changed bool, err error) {
	if m.cfg.OperatorKey == nil {
		return false, ErrNoOperatorKey
	}
	m.mu.Lock()
	stamp := m.st.nextStamp()
	m.mu.Unlock()
	c := RouteChange{Route: r, Present: present, Stamp: stamp, Origin: m.cfg.Name}
	SignRouteChange(&c, m.cfg.OperatorKey)
	return m.ApplyRouteChange(c)
}

// ApplyRouteChange verifies an operator-signed route change and merges it;
// see ApplyPolicyChange for the rules.
func (m *Mesh) ApplyRouteChange(c RouteChange) (changed bool, err error) {
	if err := c.Route.Validate(); err != nil {
		return false, err
	}
	if c.Origin == "" || len(c.Origin) > maxNameLen {
		return false, errors.New("mesh: route change needs an origin of 1-253 bytes")
	}
	e := c.entry()
	if err := m.verifySig(e.Signer, e.Sig, routeSignedBytes(e)); err != nil {
		m.rejectSigned("route change", c.Origin, err)
		return false, fmt.Errorf("route change refused: %w", err)
	}
	if len(encode(msgRoute, e)) > maxMsg {
		return false, errors.New("mesh: route too long for a gossip message")
	}
	m.mu.Lock()
	if limit := uint64(m.st.now().Add(maxFutureStamp).UnixNano()); c.Stamp > limit {
		m.mu.Unlock()
		return false, fmt.Errorf("route change refused: its stamp is %s ahead of this cell's clock (check the clocks)",
			aheadBy(c.Stamp, m.st.now()))
	}
	k := c.Route.key()
	have, ok := m.st.routes[k]
	if (ok && have.Present) == c.Present {
		m.st.observeStamp(c.Stamp)
		m.mu.Unlock()
		return false, nil
	}
	if ok && !e.newer(have) {
		m.mu.Unlock()
		return false, &StaleChangeError{Rule: c.Route.String(), Current: have.Stamp}
	}
	m.st.observeStamp(c.Stamp)
	m.st.routes[k] = e
	m.mu.Unlock()
	return true, m.localChange(routeBroadcast(e))
}

// RouteStamp is the stamp of the newest change of r this cell knows.
func (m *Mesh) RouteStamp(r Route) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.routes[r.key()].Stamp
}

// mergeRouteLocked applies a route register from a peer (gossip, push/pull
// or state.json).
func (m *Mesh) mergeRouteLocked(e routeEntry, relay bool, res *mergeResult) {
	if e.Origin == "" || len(e.Origin) > maxNameLen || e.route().Validate() != nil {
		return
	}
	k := e.route().key()
	have, ok := m.st.routes[k]
	if ok && !e.newer(have) {
		return
	}
	if err := m.verifySig(e.Signer, e.Sig, routeSignedBytes(e)); err != nil {
		m.rejectSigned("route change", e.Origin, err)
		return
	}
	m.st.observeStamp(e.Stamp)
	m.st.routes[k] = e
	res.stored = true
	if (ok && have.Present) != e.Present {
		res.visible = true
	}
	if relay {
		res.send(routeBroadcast(e))
	}
}
