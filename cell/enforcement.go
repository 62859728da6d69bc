package cell

import (
	"net/http"
	"time"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/overlay"
)

// Policy enforcement can be switched off and on at run time, on this cell
// only, to find out whether the policy is what breaks an application (as
// Cilium's PolicyEnforcement=never does). Off, the data path passes every
// packet (overlay.OpenFilter) and tracks no flows; on again, every flow
// opened meanwhile is judged against the rules on its next packet, in
// either direction (engine.Engine.ResumeTracking), so a flow no rule
// allows is cut at once, whichever end sends first. The switch is not
// persisted: a restarted agent enforces again unless it was started with
// --policy=off, and judges the flows under way the same way. While it is
// off the agent warns once a minute and weft_policy_enforced is 0.

// enforcement is the agent's enforcement state.
type enforcement struct {
	off           bool      // the data path passes every packet
	since, warned time.Time // last switched at run time; last warned
}

// enforcementWarnEvery is how often an agent with enforcement switched
// off says so in its log.
const enforcementWarnEvery = time.Minute

// enforcing reports whether the data path applies the policy, and since
// when (zero: since the agent started).
func (a *Agent) enforcing() (on bool, since time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.enf.off, a.enf.since
}

// setEnforcement switches the policy on the data path on or off.
func (a *Agent) setEnforcement(on bool) cellapi.EnforcementState {
	a.mu.Lock()
	defer a.mu.Unlock()
	if on == !a.enf.off {
		return cellapi.EnforcementState{Enabled: on, Since: a.enf.since}
	}
	f := overlay.Filter(a.engine)
	if on {
		a.engine.ResumeTracking() // before the engine sees a packet
	} else {
		f = overlay.OpenFilter{LocalSubnet: a.ov.LocalSubnet()}
	}
	a.ov.Wrapper().SetFilter(f)
	a.enf.off, a.enf.since, a.enf.warned = !on, time.Now(), time.Now()
	if on {
		a.log.Info("policy enforcement switched on: every flow is judged against the rules on its next packet")
	} else {
		a.log.Warn("policy enforcement switched off: every packet passes until it is switched on again or the agent restarts")
	}
	return cellapi.EnforcementState{Enabled: on, Since: a.enf.since}
}

// warnEnforcementOff logs, at most once per enforcementWarnEvery, that
// enforcement is off. The agent loop calls it.
func (a *Agent) warnEnforcementOff(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.enf.off || now.Sub(a.enf.warned) < enforcementWarnEvery {
		return
	}
	a.enf.warned = now
	args := []any{}
	if !a.enf.since.IsZero() {
		args = append(args, "off_for", now.Sub(a.enf.since).Round(time.Second).String())
	}
	a.log.Warn("policy enforcement is off: every packet passes", args...)
}

func (a *Agent) handleGetEnforcement(w http.ResponseWriter, r *http.Request) {
	on, since := a.enforcing()
	writeJSON(w, http.StatusOK, cellapi.EnforcementState{Enabled: on, Since: since})
}

func (a *Agent) handleSetEnforcement(w http.ResponseWriter, r *http.Request) {
	var st cellapi.EnforcementState
	if !readJSON(w, r, &st) {
		return
	}
	if !st.Since.IsZero() {
		writeError(w, http.StatusBadRequest, "policy-enforcement: since is set by the agent, not by a request")
		return
	}
	if !a.waitReady(r.Context(), 10*time.Second) {
		writeError(w, http.StatusServiceUnavailable, "policy-enforcement: the data plane is not up (no subnet lease yet)")
		return
	}
	writeJSON(w, http.StatusOK, a.setEnforcement(st.Enabled))
}
