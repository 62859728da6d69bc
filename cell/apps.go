package cell

import (
	"net/http"
	"slices"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/policy"
)

// GET /v1/apps: the app names this agent knows, for shell completion
// (`weft add-network-policy <TAB>`): the apps of registered containers on
// every cell, and those that network policies, egress and ingress rules
// name. Sorted, each once.

func (a *Agent) handleListApps(w http.ResponseWriter, r *http.Request) {
	var apps []string
	for _, e := range a.mesh.Endpoints() {
		apps = append(apps, e.App)
	}
	for _, p := range a.mesh.Policies() {
		apps = append(apps, p.Source, p.Destination)
	}
	for _, e := range a.mesh.EgressRules() {
		if e.App != policy.EgressAll {
			apps = append(apps, e.App)
		}
	}
	for _, i := range a.mesh.IngressRules() {
		apps = append(apps, i.App)
	}
	slices.Sort(apps)
	writeJSON(w, http.StatusOK, cellapi.AppList{Apps: append([]string{}, slices.Compact(apps)...)})
}
