package cell

import (
	"net/http"
	"os"
)

// FlowLogState is the body of GET and PUT /v1/flow-logs.
type FlowLogState struct {
	Enabled bool `json:"enabled"`
}

// Flow logs are JSON lines on the agent's standard error, beside its own
// log (which is why they are off by default): one per denied packet and per
// new allowed flow, rate-limited in the engine before anything is formatted.
func (a *Agent) handleGetFlowLogs(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, FlowLogState{Enabled: a.engine.FlowLogEnabled()})
}

func (a *Agent) handleSetFlowLogs(w http.ResponseWriter, r *http.Request) {
	var st FlowLogState
	if !readJSON(w, r, &st) {
		return
	}
	if st.Enabled {
		a.engine.SetFlowLog(os.Stderr)
	} else {
		a.engine.SetFlowLog(nil)
	}
	a.log.Info("flow logs switched", "enabled", st.Enabled)
	writeJSON(w, http.StatusOK, st)
}
