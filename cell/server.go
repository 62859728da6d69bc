package cell

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
)

func (a *Agent) newServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", a.handleStatus)
	mux.HandleFunc("GET /v1/containers", a.handleListContainers)
	mux.HandleFunc("POST /v1/containers", a.handleCreateContainer)
	mux.HandleFunc("DELETE /v1/containers/{name}", a.handleDeleteContainer)
	mux.HandleFunc("GET /v1/policies", a.handleListPolicies)
	mux.HandleFunc("GET /v1/apps", a.handleListApps) // apps.go
	mux.HandleFunc("POST /v1/policies", a.handleAddPolicy)
	mux.HandleFunc("DELETE /v1/policies", a.handleRemovePolicy)
	a.registerOperatorRoutes(mux) // operator.go
	mux.HandleFunc("GET /v1/routes", a.handleListRoutes)
	mux.HandleFunc("POST /v1/route-changes", a.handleRouteChange)
	mux.HandleFunc("GET /v1/flow-logs", a.handleGetFlowLogs)
	mux.HandleFunc("PUT /v1/flow-logs", a.handleSetFlowLogs)
	a.registerTraceRoutes(mux) // trace.go, flowlog.go
	mux.HandleFunc("GET /v1/policy-enforcement", a.handleGetEnforcement)
	mux.HandleFunc("PUT /v1/policy-enforcement", a.handleSetEnforcement)
	mux.HandleFunc("POST /v1/attachments", a.handleAttach)
	mux.HandleFunc("GET /v1/attachments/{id}", a.handleGetAttachment)
	mux.HandleFunc("DELETE /v1/attachments/{id}", a.handleDetach)
	mux.HandleFunc("POST /v1/attachments/gc", a.handleGC)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, cellapi.ErrorBody{Error: fmt.Sprintf(format, args...)})
}

// readJSON decodes a request body of at most 1 MiB strictly: unknown
// fields are an error.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	return readJSONLimit(w, r, v, 1<<20)
}

// readJSONLimit is readJSON for a body of at most limit bytes.
func readJSONLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: %v", err)
		return false
	}
	return true
}

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	a.waitRecovered(r.Context())
	rules := a.mesh.Policies()
	st := cellapi.Status{
		Name:       a.cfg.Name,
		Version:    a.cfg.Version,
		Interface:  a.cfg.Interface,
		Containers: len(a.localContainers()),
		Policies:   len(rules),
		Flows:      a.engine.Flows(),
		Verdicts:   map[string]uint64{},
	}
	if s := a.mesh.Subnet(); s.IsValid() {
		st.Subnet = s.String()
	}
	if a.cfg.OverlayCIDR.IsValid() {
		st.Overlay = a.cfg.OverlayCIDR.String()
	}
	st.LeaseError, st.RejectedPolicyChanges = a.mesh.LeaseError(), a.mesh.RejectedPolicies()
	if c, lost := a.mesh.Conflict(); lost {
		st.SubnetConflict = c.Holder
		st.ConflictedContainers = conflicted(c, a.localContainers())
	}
	st.PolicyVersion = a.policyVersion(rules)
	st.PolicyEnforced, _ = a.enforcing()
	st.MemberCounts = map[string]int{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	st.Ready, st.NotReady = a.readiness()
	keyNames := map[string]string{}
	members := a.mesh.Members()
	st.VersionWarning = versionSkew(members)
	for _, m := range members {
		st.MemberCounts[m.State.String()]++
		keyNames[m.WGPublicKey] = m.Name
		mm := cellapi.Member{Name: m.Name, Addr: m.Addr.String(), State: m.State.String(), Self: m.Self,
			Version: m.Version, Features: m.Features.Names()}
		if m.Subnet.IsValid() {
			mm.Subnet = m.Subnet.String()
		}
		st.Members = append(st.Members, mm)
	}
	for v, n := range a.engine.Counters().All() {
		if n > 0 && v.Allowed() {
			st.Verdicts[v.String()] = n
		}
	}
	for reason, n := range a.denials() {
		if n > 0 {
			st.Verdicts[reason] = n
		}
	}
	if eg, in := a.egressAccepted(); eg > 0 || in > 0 {
		st.Verdicts[overlay.GuardEgressAccepted], st.Verdicts[overlay.GuardIngressAccepted] = eg, in
	}
	a.mu.Lock()
	ov, pm := a.ov, a.pmtu
	a.mu.Unlock()
	if ov != nil {
		peers, err := readPeers(a.cfg.Interface)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "read WireGuard peers of %s: %v", a.cfg.Interface, err)
			return
		}
		partial := ov.PartialTCPPeers()
		st.PartialTCPChecksums = ov.AcceptsPartialTCPChecksum()
		for i := range peers {
			peers[i].PartialTCPChecksum = partial[peers[i].PublicKey]
			peers[i].Name = keyNames[peers[i].PublicKey]
			if pm != nil {
				if m, ok := pm.Get(peers[i].PublicKey); ok {
					peers[i].PathMTU, peers[i].PathMTUState = m.MTU, m.State
				}
			}
			if !peers[i].LastHandshake.IsZero() {
				peers[i].HandshakeAge = time.Since(peers[i].LastHandshake).Round(time.Millisecond).Seconds()
			}
		}
		st.Peers = peers
	}
	writeJSON(w, http.StatusOK, st)
}

// readPeers reads the WireGuard peers through wgctrl, i.e. through the UAPI
// socket, as `wg show` does.
func readPeers(iface string) ([]cellapi.Peer, error) {
	c, err := wgctrl.New()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	d, err := c.Device(iface)
	if err != nil {
		return nil, err
	}
	peers := make([]cellapi.Peer, 0, len(d.Peers))
	for _, p := range d.Peers {
		pp := cellapi.Peer{
			PublicKey:     p.PublicKey.String(),
			LastHandshake: p.LastHandshakeTime,
			RxBytes:       p.ReceiveBytes,
			TxBytes:       p.TransmitBytes,
		}
		if p.Endpoint != nil {
			pp.Endpoint = p.Endpoint.String()
		}
		for _, a := range p.AllowedIPs {
			pp.AllowedIPs = append(pp.AllowedIPs, a.String())
		}
		peers = append(peers, pp)
	}
	return peers, nil
}

func (a *Agent) handleListContainers(w http.ResponseWriter, r *http.Request) {
	a.waitRecovered(r.Context())
	out := []cellapi.Container{}
	c, lost := a.mesh.Conflict()
	for _, e := range a.localContainers() {
		ct := cellapi.Container{Name: e.Name, App: e.App, IP: e.IP.String()}
		if lost && c.Subnet.Contains(e.IP) {
			ct.Status = cellapi.StatusConflict
		}
		out = append(out, ct)
	}
	writeJSON(w, http.StatusOK, out)
}

// conflicted counts the containers of local in the subnet of the lost
// conflict c.
func conflicted(c mesh.SubnetConflict, local []mesh.Endpoint) int {
	n := 0
	for _, e := range local {
		if c.Subnet.Contains(e.IP) {
			n++
		}
	}
	return n
}

// registerStatus is the HTTP status of a failed mesh.AddEndpoint: 409 for
// a conflict lost meanwhile (refuseInConflict checked before), else 500.
func registerStatus(err error) int {
	if errors.Is(err, mesh.ErrSubnetConflict) {
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// refuseInConflict answers 409 and reports true while this cell has lost
// a conflict over its subnet: a new container there would be unreachable.
func (a *Agent) refuseInConflict(w http.ResponseWriter) bool {
	c, lost := a.mesh.Conflict()
	if lost {
		writeError(w, http.StatusConflict, "cell %s lost its subnet %v to cell %s (an older lease): no new containers here; "+
			"remove this cell's containers and it re-picks a free subnet (docs/control-plane.md, Conflicts)", a.cfg.Name, c.Subnet, c.Holder)
	}
	return lost
}

// validApp reports whether app is a valid app name (policy.ValidAppName),
// answering 400 if not.
func validApp(w http.ResponseWriter, app string) bool {
	if !policy.ValidAppName(app) {
		writeError(w, http.StatusBadRequest, "invalid app name %q: use 1-128 letters, digits, '.', '_' or '-', or ORG/SPACE/APP of those", app)
		return false
	}
	return true
}

func (a *Agent) handleCreateContainer(w http.ResponseWriter, r *http.Request) {
	var req cellapi.ContainerRequest
	if !readJSON(w, r, &req) {
		return
	}
	if !validApp(w, req.App) {
		return
	}
	if err := attach.ValidContainerName(req.Name); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if !a.waitReady(r.Context(), 15*time.Second) {
		writeError(w, http.StatusServiceUnavailable, "cell %s has no subnet lease yet (still joining the mesh)", a.cfg.Name)
		return
	}
	if a.refuseInConflict(w) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refuseWhileRenumberingLocked(w) {
		return
	}
	local := a.localContainers()
	for _, e := range local {
		if e.Name == req.Name {
			writeError(w, http.StatusConflict, "container name %q already in use on cell %s", req.Name, a.cfg.Name)
			return
		}
	}
	ip, ok, err := a.freeIPLocked(local)
	switch {
	case err != nil:
		writeError(w, http.StatusInternalServerError, "pick an address: %v", err)
		return
	case !ok:
		writeError(w, http.StatusInsufficientStorage, "subnet %v of cell %s is full", a.mesh.Subnet(), a.cfg.Name)
		return
	}
	if err := a.ov.AttachContainer(req.Name, ip); err != nil {
		if errors.Is(err, attach.ErrContainerExists) {
			writeError(w, http.StatusConflict, "container name %q already in use: %v", req.Name, err)
			return
		}
		writeError(w, http.StatusInternalServerError, "attach container %s: %v", req.Name, err)
		return
	}
	if err := a.labelLocked(req.Name, req.App); err != nil {
		a.ov.DetachContainer(req.Name)
		writeError(w, http.StatusInternalServerError, "attach container %s: %v", req.Name, err)
		return
	}
	if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: ip, App: req.App, Name: req.Name}); err != nil {
		a.ov.DetachContainer(req.Name)
		writeError(w, registerStatus(err), "register container %s: %v", req.Name, err)
		return
	}
	a.reconcileLocked()
	if err := a.writeResolvConf(req.Name); err != nil {
		a.log.Warn("write resolv.conf", "container", req.Name, "err", err)
	}
	a.log.Info("container created", "container", req.Name, "app", req.App, "ip", ip)
	writeJSON(w, http.StatusCreated, cellapi.Container{Name: req.Name, App: req.App, IP: ip.String()})
}

// freeIP is the lowest address of subnet neither used by a registered
// container nor routed (to a veth still attached), skipping the network
// address, .1 (reserved for the cell) and the broadcast address.
func freeIP(subnet netip.Prefix, used []mesh.Endpoint, routed []netip.Addr) (netip.Addr, bool) {
	taken := make(map[netip.Addr]bool, len(used)+len(routed))
	for _, e := range used {
		taken[e.IP] = true
	}
	for _, ip := range routed {
		taken[ip] = true
	}
	ip := subnet.Masked().Addr().Next().Next()
	for ; subnet.Contains(ip); ip = ip.Next() {
		if !subnet.Contains(ip.Next()) {
			break // broadcast
		}
		if !taken[ip] {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func (a *Agent) handleDeleteContainer(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	a.waitRecovered(r.Context())
	a.mu.Lock()
	defer a.mu.Unlock()
	e, found, err := a.unregisterLocked(name)
	switch {
	case err != nil:
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	case !found:
		writeError(w, http.StatusNotFound, "no container named %q on cell %s", name, a.cfg.Name)
		return
	}
	if a.ov != nil {
		if err := a.ov.DetachContainer(name); err != nil {
			writeError(w, http.StatusInternalServerError, "detach container %s: %v", name, err)
			return
		}
	}
	removeResolvConf(name)
	a.log.Info("container deleted", "container", name, "ip", e.IP)
	w.WriteHeader(http.StatusNoContent)
}

// unregisterLocked removes this cell's container name from the endpoint
// registry and reconciles (the policy table is compiled again), so its
// address is refused at once. found is false when the cell has no such
// container. The caller removes the container's network side. Needs a.mu.
func (a *Agent) unregisterLocked(name string) (e mesh.Endpoint, found bool, err error) {
	for _, e := range a.localContainers() {
		if e.Name != name {
			continue
		}
		if err := a.mesh.RemoveEndpoint(e.IP); err != nil {
			return e, true, fmt.Errorf("unregister container %s: %w", name, err)
		}
		a.reconcileLocked()
		return e, true, nil
	}
	return mesh.Endpoint{}, false, nil
}

func (a *Agent) handleListPolicies(w http.ResponseWriter, r *http.Request) {
	src := r.URL.Query().Get("source")
	out := cellapi.PolicyList{Policies: []cellapi.PolicyRule{}}
	for _, p := range a.mesh.Policies() {
		if src == "" || p.Source == src {
			out.Policies = append(out.Policies, cellapi.FromRule(p))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// handleAddPolicy (POST) answers 201 for a new rule, 200 for one that
// existed; handleRemovePolicy (DELETE) 204, or 404 "Policy does not exist.".
// Both sign with the agent's operator key (403 without one).
func (a *Agent) handleAddPolicy(w http.ResponseWriter, r *http.Request) { a.changePolicy(w, r, true) }
func (a *Agent) handleRemovePolicy(w http.ResponseWriter, r *http.Request) {
	a.changePolicy(w, r, false)
}

func (a *Agent) changePolicy(w http.ResponseWriter, r *http.Request, present bool) {
	var pr cellapi.PolicyRule
	if !readJSON(w, r, &pr) {
		return
	}
	rule, err := pr.Rule()
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	change, verb := a.mesh.RemovePolicy, "removed"
	if present {
		change, verb = a.mesh.AddPolicy, "added"
	}
	changed, err := change(rule)
	switch {
	case errors.Is(err, store.ErrNoOperatorKey):
		writeError(w, http.StatusForbidden, "cell %s cannot sign: %v (or WEFT_OPERATOR_KEY)", a.cfg.Name, err)
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, "policy %s: %v", verb, err)
		return
	}
	if changed {
		a.reconcileNow()
		a.log.Info("policy "+verb, "rule", rule.String())
	}
	switch {
	case present && changed:
		writeJSON(w, http.StatusCreated, cellapi.FromRule(rule))
	case present:
		writeJSON(w, http.StatusOK, cellapi.FromRule(rule))
	case changed:
		w.WriteHeader(http.StatusNoContent)
	default:
		writeError(w, http.StatusNotFound, "Policy does not exist.")
	}
}
