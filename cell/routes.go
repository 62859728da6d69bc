package cell

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/weft-net/weft/mesh"
)

// InternalRoute is the JSON form of mesh.Route: HOST.DOMAIN -> APP.
type InternalRoute struct {
	Host   string `json:"host"`
	Domain string `json:"domain"`
	App    string `json:"app"`
}

// RouteList answers GET /v1/routes.
type RouteList struct {
	Routes []InternalRoute `json:"routes"`
}

// RouteChangeRequest is the body of POST /v1/route-changes: a route to map
// (present) or unmap, signed by an operator key, or unsigned to have the
// agent sign it with its own operator key.
type RouteChangeRequest struct {
	Route   InternalRoute `json:"route"`
	Present bool          `json:"present"`
	Stamp   uint64        `json:"stamp,omitempty"`
	Origin  string        `json:"origin,omitempty"`
	Signer  []byte        `json:"signer,omitempty"`
	Sig     []byte        `json:"sig,omitempty"`
}

func (r InternalRoute) route() mesh.Route {
	return mesh.Route{Host: r.Host, Domain: strings.TrimSuffix(r.Domain, "."), App: r.App}
}

func (a *Agent) handleListRoutes(w http.ResponseWriter, r *http.Request) {
	out := RouteList{Routes: []InternalRoute{}}
	for _, rt := range a.mesh.Routes() {
		out.Routes = append(out.Routes, InternalRoute{Host: rt.Host, Domain: rt.Domain, App: rt.App})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleRouteChange answers with the same codes as a policy change: 201
// mapped, 204 unmapped, 200 already mapped, 404 not mapped, 403 refused
// (unsigned, untrusted, or this cell cannot sign), 409 stale, 400 invalid.
func (a *Agent) handleRouteChange(w http.ResponseWriter, r *http.Request) {
	var req RouteChangeRequest
	if !readJSON(w, r, &req) {
		return
	}
	rt := req.Route.route()
	if err := rt.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var changed bool
	var err error
	if len(req.Signer) == 0 && len(req.Sig) == 0 {
		changed, err = a.mesh.MapRoute(rt, req.Present)
	} else {
		changed, err = a.mesh.ApplyRouteChange(mesh.RouteChange{Route: rt, Present: req.Present,
			Stamp: req.Stamp, Origin: req.Origin, Signer: req.Signer, Sig: req.Sig})
	}
	var stale *mesh.StaleChangeError
	switch {
	case errors.Is(err, mesh.ErrNoOperatorKey):
		writeError(w, http.StatusForbidden, "cell %s cannot sign: %v (or WEFT_OPERATOR_KEY)", a.cfg.Name, err)
		return
	case errors.As(err, &stale):
		writeJSON(w, http.StatusConflict, apiError{Error: err.Error(), CurrentStamp: stale.Current})
		return
	case err != nil && strings.Contains(err.Error(), "refused"):
		writeError(w, http.StatusForbidden, "%v", err)
		return
	case err != nil && !changed:
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if changed {
		a.compile() // refreshes DNS
		a.log.Info("internal route changed", "route", rt.String(), "mapped", req.Present)
	}
	switch {
	case changed && req.Present:
		w.WriteHeader(http.StatusCreated)
	case changed:
		w.WriteHeader(http.StatusNoContent)
	case req.Present:
		w.WriteHeader(http.StatusOK)
	default:
		writeError(w, http.StatusNotFound, "Route does not exist.")
	}
}

// Routes lists the internal routes.
func (c *Client) Routes(ctx context.Context) ([]InternalRoute, error) {
	var l RouteList
	return l.Routes, c.do(ctx, http.MethodGet, "/v1/routes", nil, &l)
}

// ChangeRoute maps (present) or unmaps rt: signed with priv when it is not
// nil (re-signed once above the agent's stamp if the signer's clock is
// behind), else by the agent. A missing route is a *StatusError with 404.
func (c *Client) ChangeRoute(ctx context.Context, priv ed25519.PrivateKey, rt InternalRoute, present bool) error {
	req := RouteChangeRequest{Route: rt, Present: present}
	var above uint64
	for try := 0; ; try++ {
		if priv != nil {
			ch := mesh.RouteChange{Route: rt.route(), Present: present,
				Stamp: max(uint64(time.Now().UnixNano()), above+1), Origin: CLIOrigin()}
			mesh.SignRouteChange(&ch, priv)
			req.Stamp, req.Origin, req.Signer, req.Sig = ch.Stamp, ch.Origin, ch.Signer, ch.Sig
		}
		_, err := c.doCode(ctx, http.MethodPost, "/v1/route-changes", req, nil)
		var se *StatusError
		if priv != nil && try == 0 && errors.As(err, &se) && se.Code == http.StatusConflict {
			above = se.CurrentStamp
			continue
		}
		return err
	}
}
