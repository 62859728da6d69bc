package cell

import (
	"errors"
	"net/http"
	"strings"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh/store"
)

// meshRoute is the mesh form of r.
func meshRoute(r cellapi.InternalRoute) store.Route {
	return store.Route{Host: r.Host, Domain: strings.TrimSuffix(r.Domain, "."), App: r.App}
}

func (a *Agent) handleListRoutes(w http.ResponseWriter, r *http.Request) {
	out := cellapi.RouteList{Routes: []cellapi.InternalRoute{}}
	for _, rt := range a.mesh.Routes() {
		out.Routes = append(out.Routes, cellapi.InternalRoute{Host: rt.Host, Domain: rt.Domain, App: rt.App})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleRouteChange answers with the same codes as a policy change: 201
// mapped, 204 unmapped, 200 already mapped, 404 not mapped, 403 refused
// (unsigned, untrusted, or this cell cannot sign), 409 stale, 400 invalid.
func (a *Agent) handleRouteChange(w http.ResponseWriter, r *http.Request) {
	var req cellapi.RouteChangeRequest
	if !readJSON(w, r, &req) {
		return
	}
	rt := meshRoute(req.Route)
	if err := rt.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var changed bool
	var err error
	if len(req.Signer) == 0 && len(req.Sig) == 0 {
		changed, err = a.mesh.MapRoute(rt, req.Present)
	} else {
		changed, err = a.mesh.ApplyRouteChange(store.RouteChange{Route: rt, Present: req.Present,
			Stamp: req.Stamp, Origin: req.Origin, Signer: req.Signer, Sig: req.Sig})
	}
	var stale *store.StaleChangeError
	switch {
	case errors.Is(err, store.ErrNoOperatorKey):
		writeError(w, http.StatusForbidden, "cell %s cannot sign: %v (or WEFT_OPERATOR_KEY)", a.cfg.Name, err)
		return
	case errors.As(err, &stale):
		writeJSON(w, http.StatusConflict, cellapi.ErrorBody{Error: err.Error(), CurrentStamp: stale.Current})
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
		a.reconcileNow() // refreshes DNS
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
