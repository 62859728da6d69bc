package cell

import (
	"fmt"
	"net/http"
)

// The metrics listener (--metrics-addr) also serves
//
//	GET /healthz   200 "ok" while the agent process serves HTTP
//	GET /readyz    200 "ready" once the cell holds its subnet lease and its
//	               data plane is up; 503 with the reason otherwise (no lease
//	               yet, the pool exhausted, data plane not up, stopping)
//
// for load balancers, orchestrators and monitoring. Readiness is the
// moment the agent also sends READY=1 to systemd (notify.go).

// readiness reports whether the cell can carry traffic, and if not why.
// Safe for concurrent use.
func (a *Agent) readiness() (ready bool, reason string) {
	if a.stopping.Load() {
		return false, "stopping"
	}
	if !a.mesh.Subnet().IsValid() {
		if e := a.mesh.LeaseError(); e != "" {
			return false, "no subnet lease: " + e
		}
		return false, "no subnet lease yet"
	}
	select {
	case <-a.ready:
	default:
		return false, "data plane not up yet"
	}
	return true, ""
}

func (a *Agent) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

func (a *Agent) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if ok, reason := a.readiness(); !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready:", reason)
		return
	}
	fmt.Fprintln(w, "ready")
}
