package store

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

// RouteChange is an operator-signed change of the route set.
type RouteChange struct {
	Route   Route
	Present bool
	Stamp   uint64
	Origin  string
	Signer  ed25519.PublicKey
	Sig     []byte
}

// RouteReg is one route CRDT register (wire and state.json form).
type RouteReg struct {
	Host    string `json:"h"`
	Domain  string `json:"d"`
	App     string `json:"a"`
	Present bool   `json:"p,omitempty"`
	Stamp   uint64 `json:"t"`
	Origin  string `json:"o"`
	Signer  []byte `json:"k,omitempty"`
	Sig     []byte `json:"g,omitempty"`
}

// Route is the register's route.
func (e RouteReg) Route() Route { return Route{Host: e.Host, Domain: e.Domain, App: e.App} }

func (e RouteReg) newer(q RouteReg) bool {
	if e.Stamp != q.Stamp {
		return e.Stamp > q.Stamp
	}
	return e.Origin > q.Origin
}

// Reg is c as a register.
func (c RouteChange) Reg() RouteReg {
	return RouteReg{Host: c.Route.Host, Domain: c.Route.Domain, App: c.Route.App, Present: c.Present,
		Stamp: c.Stamp, Origin: c.Origin, Signer: c.Signer, Sig: c.Sig}
}

// routeSignedBytes is what an operator signs for a route change.
func routeSignedBytes(e RouteReg) []byte {
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
	c.Sig = ed25519.Sign(priv, routeSignedBytes(c.Reg()))
}

// VerifyRoute checks the signature of route register e.
func (s *Store) VerifyRoute(e RouteReg) error { return s.Verify(e.Signer, e.Sig, routeSignedBytes(e)) }

// Routes returns the current route set, sorted.
func (s *Store) Routes() []Route {
	out := make([]Route, 0, len(s.routes))
	for _, e := range s.routes {
		if e.Present {
			out = append(out, e.Route())
		}
	}
	slices.SortFunc(out, func(a, b Route) int { return strings.Compare(a.key(), b.key()) })
	return out
}

// NumRoutes is the number of route registers, tombstones included.
func (s *Store) NumRoutes() int { return len(s.routes) }

// RouteStamp is the stamp of the newest change of r this cell knows.
func (s *Store) RouteStamp(r Route) uint64 { return s.routes[r.key()].Stamp }

// CheckRouteChange validates c and verifies its signature, and returns
// its register. No lock needed.
func (s *Store) CheckRouteChange(c RouteChange) (RouteReg, error) {
	if err := c.Route.Validate(); err != nil {
		return RouteReg{}, err
	}
	if c.Origin == "" || len(c.Origin) > MaxNameLen {
		return RouteReg{}, errors.New("mesh: route change needs an origin of 1-253 bytes")
	}
	e := c.Reg()
	if err := s.VerifyRoute(e); err != nil {
		s.RejectSigned("route change", c.Origin, err)
		return e, fmt.Errorf("route change refused: %w", err)
	}
	if len(RouteMsg(e).Body) > MaxMsg {
		return e, errors.New("mesh: route too long for a gossip message")
	}
	return e, nil
}

// MergeRouteChange merges the change c (register e, checked by
// CheckRouteChange); see MergePolicyChange for the rules.
func (s *Store) MergeRouteChange(c RouteChange, e RouteReg) (changed bool, err error) {
	if limit := uint64(s.now().Add(maxFutureStamp).UnixNano()); c.Stamp > limit {
		return false, fmt.Errorf("route change refused: its stamp is %s ahead of this cell's clock (check the clocks)",
			aheadBy(c.Stamp, s.now()))
	}
	k := c.Route.key()
	have, ok := s.routes[k]
	if (ok && have.Present) == c.Present {
		s.ObserveStamp(c.Stamp)
		return false, nil
	}
	if ok && !e.newer(have) {
		return false, &StaleChangeError{Rule: c.Route.String(), Current: have.Stamp}
	}
	s.ObserveStamp(c.Stamp)
	s.routes[k] = e
	return true, nil
}

// MergeRoute applies a route register from a peer (gossip, push/pull or
// state.json).
func (s *Store) MergeRoute(e RouteReg, relay bool, res *Result) {
	if e.Origin == "" || len(e.Origin) > MaxNameLen || e.Route().Validate() != nil {
		return
	}
	k := e.Route().key()
	have, ok := s.routes[k]
	if ok && !e.newer(have) {
		return
	}
	if err := s.VerifyRoute(e); err != nil {
		s.RejectSigned("route change", e.Origin, err)
		return
	}
	s.ObserveStamp(e.Stamp)
	s.routes[k] = e
	res.Stored = true
	if (ok && have.Present) != e.Present {
		res.Visible = true
	}
	if relay {
		res.Send(RouteMsg(e))
	}
}
