package cell

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine"
)

// Reason codes of a trace that are not engine verdicts.
const (
	traceCellDown = "cell_down" // the destination cell is dead or left
	traceNoPeer   = "no_peer"   // the destination cell is no WireGuard peer of this one
)

// staleHandshake is the age after which a WireGuard session is gone
// (wireguard-go's RejectAfterTime); the next packet starts a handshake.
const staleHandshake = 180 * time.Second

// traceView is what a trace reads: the replicated state and this cell's
// data plane, taken once per request.
type traceView struct {
	self      string
	endpoints []mesh.Endpoint
	members   []mesh.Node
	rules     []policy.Rule
	table     *engine.Table // this cell's compiled table
	enforcing bool

	overlayUp   bool
	guard       []overlay.GuardEntry // the kernel's bindings (overlayUp)
	guardErr    error
	peers       []cellapi.Peer // WireGuard peers (overlayUp)
	peersErr    error
	overlayMTU  int
	underlayMTU int                    // 0: unknown
	vethMTU     map[string]int         // local container name -> host veth MTU
	pathMTU     map[string]PeerPathMTU // peer cell name -> probed path MTU (pmtu.go)
	now         time.Time
}

func (a *Agent) handleTrace(w http.ResponseWriter, r *http.Request) {
	var req cellapi.TraceRequest
	if !readJSON(w, r, &req) {
		return
	}
	a.waitRecovered(r.Context())
	var res cellapi.TraceResult
	var err error
	if req.Live {
		res, err = a.liveTrace(r.Context(), req)
	} else if req.SourceIP != "" {
		err = badTrace(http.StatusBadRequest, "source_ip is for a live trace only")
	} else {
		res, err = traceFlow(req, a.traceView())
	}
	var se *cellapi.StatusError
	switch {
	case errors.As(err, &se):
		writeError(w, se.Code, "%s", se.Message)
	case err != nil:
		writeError(w, http.StatusInternalServerError, "trace: %v", err)
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// traceView reads the state a trace needs.
func (a *Agent) traceView() *traceView {
	v := &traceView{
		self:      a.cfg.Name,
		endpoints: a.mesh.Endpoints(),
		members:   a.mesh.Members(),
		rules:     a.mesh.Policies(),
		table:     a.engine.Table(),
		now:       time.Now(),
		vethMTU:   map[string]int{},
		pathMTU:   map[string]PeerPathMTU{},
	}
	v.enforcing, _ = a.enforcing()
	ov := a.overlay()
	if ov == nil {
		return v
	}
	v.overlayUp = true
	v.guard, v.guardErr = ov.GuardEntries()
	v.peers, v.peersErr = readPeers(a.cfg.Interface)
	v.overlayMTU = ov.Config().MTU
	a.mu.Lock()
	pm := a.pmtu
	a.mu.Unlock()
	if pm != nil {
		for _, m := range v.members {
			if p, ok := pm.ByName(m.Name); ok {
				v.pathMTU[m.Name] = p
			}
		}
	}
	if a.cfg.Bind.Addr().IsValid() {
		v.underlayMTU = underlayMTU(a.cfg.Bind.Addr(), a.log)
	}
	for _, e := range v.endpoints {
		if e.Cell != v.self {
			continue
		}
		if l, err := netlink.LinkByName(attach.HostVethName(e.Name)); err == nil {
			v.vethMTU[e.Name] = l.Attrs().MTU
		}
	}
	return v
}

func badTrace(code int, format string, args ...any) error {
	return &cellapi.StatusError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// validTrace checks what every trace, with or without --live, needs and
// returns its protocol.
func validTrace(req cellapi.TraceRequest) (policy.Protocol, error) {
	proto, err := policy.ParseProtocol(req.Protocol)
	switch {
	case req.Protocol == "":
		return proto, badTrace(http.StatusBadRequest, "protocol is required: tcp, udp or icmp")
	case err != nil:
		return proto, badTrace(http.StatusBadRequest, "%v", err)
	case proto == policy.ProtoAll:
		return proto, badTrace(http.StatusBadRequest, "protocol all: a trace follows one packet, name tcp, udp or icmp")
	case proto == policy.ProtoICMP && req.Port != 0:
		return proto, badTrace(http.StatusBadRequest, "port %d: icmp has no ports", req.Port)
	case proto != policy.ProtoICMP && req.Port == 0:
		return proto, badTrace(http.StatusBadRequest, "port is required for %s (1-65535)", proto)
	case req.Destination == "":
		return proto, badTrace(http.StatusBadRequest, "destination is required: an app name or an IP address")
	case req.Source == "" && req.FromContainer == "":
		return proto, badTrace(http.StatusBadRequest, "source is required: an app name, or from_container")
	}
	return proto, nil
}

// traceFlow answers a trace from a view. Bad input is a *StatusError
// (400, or 404 for a container that is not registered).
func traceFlow(req cellapi.TraceRequest, v *traceView) (cellapi.TraceResult, error) {
	res := cellapi.TraceResult{Cell: v.self, Sources: []cellapi.TraceEndpoint{}, Destinations: []cellapi.TraceEndpoint{}}
	proto, err := validTrace(req)
	if err != nil {
		return res, err
	}
	flow := proto.String()
	if proto != policy.ProtoICMP {
		flow += fmt.Sprintf(" port %d", req.Port)
	}

	// The source: one container, or every container of the app.
	srcApp := req.Source
	var srcs []mesh.Endpoint
	if req.FromContainer != "" {
		ip, ipErr := netip.ParseAddr(req.FromContainer)
		i := slices.IndexFunc(v.endpoints, func(e mesh.Endpoint) bool {
			return e.Name == req.FromContainer || ipErr == nil && e.IP == ip.Unmap()
		})
		if i < 0 {
			return res, badTrace(http.StatusNotFound, "no container %q (name or overlay IP) in the endpoint registry", req.FromContainer)
		}
		e := v.endpoints[i]
		if srcApp != "" && srcApp != e.App {
			return res, badTrace(http.StatusBadRequest, "container %s runs app %s, not %s", req.FromContainer, e.App, srcApp)
		}
		srcApp, srcs = e.App, []mesh.Endpoint{e}
	} else {
		if err := (policy.Rule{Source: srcApp, Destination: "x", Protocol: policy.ProtoICMP}).Validate(); err != nil {
			return res, badTrace(http.StatusBadRequest, "%v", err)
		}
		for _, e := range v.endpoints {
			if e.App == srcApp {
				srcs = append(srcs, e)
			}
		}
	}
	for _, e := range srcs {
		res.Sources = append(res.Sources, traceEndpoint(e))
	}
	if len(srcs) == 0 {
		addStep(&res, cellapi.TraceStep{Step: "source", Code: engine.DropUnknownSource.String(),
			Detail: fmt.Sprintf("no container of app %s is registered on any cell: its cell drops what it sends (spoofed), and no other cell knows its address (unknown_source)", srcApp)})
	} else {
		addStep(&res, cellapi.TraceStep{Step: "source", OK: true,
			Detail: fmt.Sprintf("app %s: %s", srcApp, describeEndpoints(srcs))})
		addStep(&res, v.antiSpoofing(srcs))
	}

	// The destination: an overlay IP, or every container of the app.
	dstApp := ""
	var dsts []mesh.Endpoint
	if ip, err := netip.ParseAddr(req.Destination); err == nil {
		ip = ip.Unmap()
		if i := slices.IndexFunc(v.endpoints, func(e mesh.Endpoint) bool { return e.IP == ip }); i >= 0 {
			dsts = []mesh.Endpoint{v.endpoints[i]}
			dstApp = dsts[0].App
		} else {
			addStep(&res, cellapi.TraceStep{Step: "destination", Code: engine.DropUnknownDestination.String(),
				Detail: fmt.Sprintf("%v is not registered: %s; the cell that owns the address drops packets for it (unknown_destination)", ip, v.subnetOwner(ip))})
		}
	} else {
		if err := (policy.Rule{Source: "x", Destination: req.Destination, Protocol: policy.ProtoICMP}).Validate(); err != nil {
			return res, badTrace(http.StatusBadRequest, "%v", err)
		}
		dstApp = req.Destination
		for _, e := range v.endpoints {
			if e.App == dstApp {
				dsts = append(dsts, e)
			}
		}
		if len(dsts) == 0 {
			addStep(&res, cellapi.TraceStep{Step: "destination", Code: engine.DropUnknownDestination.String(),
				Detail: fmt.Sprintf("no container of app %s is registered on any cell", dstApp)})
		}
	}
	for _, e := range dsts {
		res.Destinations = append(res.Destinations, traceEndpoint(e))
	}
	if len(dsts) > 0 {
		addStep(&res, cellapi.TraceStep{Step: "destination", OK: true,
			Detail: fmt.Sprintf("app %s: %s", dstApp, describeEndpoints(dsts))})
	}

	if dstApp != "" {
		addStep(&res, v.policyStep(srcApp, dstApp, proto, req.Port, flow, srcs, dsts))
	}
	addStep(&res, v.enforcementStep(dsts))
	for _, cell := range cellsOf(dsts) {
		addStep(&res, v.cellStep(cell))
	}
	addStep(&res, v.mtuStep(srcs, dsts, &res))

	res.Verdict, res.Reason = "allow", "every step passes"
	for _, s := range res.Steps {
		if s.Code != "" {
			res.Verdict, res.Reason = s.Code, s.Step+": "+s.Detail
			break
		}
		if s.Step == "policy" && s.Rule != nil {
			res.Reason = "allowed by rule " + s.RuleID
		}
	}
	return res, nil
}

func addStep(r *cellapi.TraceResult, s cellapi.TraceStep) { r.Steps = append(r.Steps, s) }

func traceEndpoint(e mesh.Endpoint) cellapi.TraceEndpoint {
	return cellapi.TraceEndpoint{App: e.App, IP: e.IP.String(), Name: e.Name, Cell: e.Cell}
}

func describeEndpoints(es []mesh.Endpoint) string {
	parts := make([]string, 0, len(es))
	for _, e := range es {
		parts = append(parts, fmt.Sprintf("%v (container %s on cell %s)", e.IP, e.Name, e.Cell))
	}
	return strings.Join(parts, ", ")
}

// cellsOf returns the distinct cells of es, sorted.
func cellsOf(es []mesh.Endpoint) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Cell)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// subnetOwner says which cell's subnet holds ip.
func (v *traceView) subnetOwner(ip netip.Addr) string {
	for _, m := range v.members {
		if m.Subnet.IsValid() && m.Subnet.Contains(ip) {
			return fmt.Sprintf("it is in cell %s's subnet %v, where no container has it", m.Name, m.Subnet)
		}
	}
	return "no cell holds a subnet with it"
}

// antiSpoofing checks that every source container of this cell has its
// address bound to its veth in the guard (overlay/guard_linux.go).
func (v *traceView) antiSpoofing(srcs []mesh.Endpoint) cellapi.TraceStep {
	s := cellapi.TraceStep{Step: "anti_spoofing", OK: true}
	var here, missing, elsewhere []string
	for _, e := range srcs {
		if e.Cell != v.self {
			elsewhere = append(elsewhere, e.Cell)
			continue
		}
		want := overlay.GuardEntry{Veth: attach.HostVethName(e.Name), IP: e.IP}
		if v.overlayUp && v.guardErr == nil && !slices.Contains(v.guard, want) {
			missing = append(missing, fmt.Sprintf("%v on %s", e.IP, want.Veth))
		} else {
			here = append(here, fmt.Sprintf("%v on %s", e.IP, want.Veth))
		}
	}
	var parts []string
	switch {
	case len(missing) > 0:
		s.OK, s.Code = false, engine.DropSpoofed.String()
		parts = append(parts, "not bound in table inet weft, so dropped as spoofed: "+strings.Join(missing, ", "))
	case len(here) > 0 && !v.overlayUp:
		s.OK = false
		parts = append(parts, "the data plane of this cell is not up: the guard cannot be read")
	case len(here) > 0 && v.guardErr != nil:
		s.OK = false
		parts = append(parts, fmt.Sprintf("cannot read the guard: %v", v.guardErr))
	case len(here) > 0:
		parts = append(parts, "source bound to its veth in table inet weft: "+strings.Join(here, ", "))
	}
	if len(elsewhere) > 0 {
		slices.Sort(elsewhere)
		parts = append(parts, "bound by the guard of cell "+strings.Join(slices.Compact(elsewhere), ", ")+" (weft trace there shows its binding)")
	}
	s.Detail = strings.Join(parts, "; ")
	return s
}

// policyStep finds the rule that allows srcApp -> dstApp, or the closest
// ones, and checks this cell's compiled table against the rule set for the
// local destinations.
func (v *traceView) policyStep(srcApp, dstApp string, proto policy.Protocol, port uint16, flow string, srcs, dsts []mesh.Endpoint) cellapi.TraceStep {
	s := cellapi.TraceStep{Step: "policy"}
	var pair, near []policy.Rule
	for _, r := range v.rules {
		sameProto := r.Protocol == proto || r.Protocol == policy.ProtoAll
		switch {
		case r.Source == srcApp && r.Destination == dstApp:
			if sameProto && (proto == policy.ProtoICMP || r.Ports.Contains(port)) && s.Rule == nil {
				pr := cellapi.FromRule(r)
				s.Rule, s.RuleID = &pr, r.Key()
				continue
			}
			pair = append(pair, r)
		case r.Source == srcApp || r.Destination == dstApp:
			if sameProto {
				near = append(near, r)
			}
		}
	}
	if s.Rule != nil {
		s.OK = true
		s.Detail = fmt.Sprintf("rule %s allows %s -> %s %s", s.RuleID, srcApp, dstApp, flow)
	} else {
		s.Code = engine.DropNoPolicy.String()
		answer := "a TCP RST"
		switch proto {
		case policy.ProtoUDP:
			answer = "an ICMP port-unreachable"
		case policy.ProtoICMP:
			answer = "nothing (the echo request is dropped)"
		}
		s.Detail = fmt.Sprintf("no rule allows %s -> %s %s: the destination cell drops the first packet and answers with %s", srcApp, dstApp, flow, answer)
		closest := pair
		if len(closest) == 0 {
			closest = near
		}
		for _, r := range closest[:min(len(closest), 5)] {
			s.Closest = append(s.Closest, cellapi.FromRule(r))
		}
	}
	// The table this cell enforces must agree for its own destinations.
	for _, d := range dsts {
		if d.Cell != v.self || v.table == nil {
			continue
		}
		for _, src := range srcs {
			if got := v.table.Allowed(src.IP, d.IP, proto, port); got != s.OK {
				s.OK, s.Code = false, engine.DropNoPolicy.String()
				s.Detail += fmt.Sprintf("; but this cell's compiled table says allowed=%v for %v -> %v (not compiled yet?)", got, src.IP, d.IP)
				return s
			}
		}
	}
	return s
}

// enforcementStep reports whether this cell applies the policy.
func (v *traceView) enforcementStep(dsts []mesh.Endpoint) cellapi.TraceStep {
	if v.enforcing {
		return cellapi.TraceStep{Step: "enforcement", OK: true, Detail: "policy enforced on this cell"}
	}
	d := "policy enforcement is OFF on this cell (weft policy-enforcement on): its data path passes every packet"
	if len(dsts) > 0 && len(cellsOf(dsts)) == 1 && dsts[0].Cell == v.self {
		d += ", so this flow passes here whatever the rules say"
	}
	return cellapi.TraceStep{Step: "enforcement", Detail: d}
}

// cellStep is the destination cell as this one sees it: its membership
// and its WireGuard peer.
func (v *traceView) cellStep(name string) cellapi.TraceStep {
	s := cellapi.TraceStep{Step: "destination_cell"}
	if name == v.self {
		s.OK, s.Detail = true, fmt.Sprintf("cell %s is this cell: the packet is hair-pinned through its TUN, no WireGuard", name)
		return s
	}
	i := slices.IndexFunc(v.members, func(m mesh.Node) bool { return m.Name == name })
	if i < 0 {
		s.Code, s.Detail = traceCellDown, fmt.Sprintf("cell %s is not a member known to this cell", name)
		return s
	}
	m := v.members[i]
	if m.State != mesh.NodeAlive && m.State != mesh.NodeSuspect {
		s.Code, s.Detail = traceCellDown, fmt.Sprintf("cell %s (%v) is %s: no WireGuard peer, nothing reaches it", name, m.Addr, m.State)
		return s
	}
	switch {
	case !v.overlayUp:
		s.Detail = fmt.Sprintf("cell %s (%v) is %s; the data plane of this cell is not up", name, m.Addr, m.State)
		return s
	case v.peersErr != nil:
		s.Detail = fmt.Sprintf("cell %s (%v) is %s; cannot read the WireGuard peers: %v", name, m.Addr, m.State, v.peersErr)
		return s
	}
	j := slices.IndexFunc(v.peers, func(p cellapi.Peer) bool { return p.PublicKey == m.WGPublicKey })
	if j < 0 {
		s.Code, s.Detail = traceNoPeer, fmt.Sprintf("cell %s (%v) is %s but not a WireGuard peer of this cell (yet: peers are synced every few seconds)", name, m.Addr, m.State)
		return s
	}
	p := v.peers[j]
	s.OK = true
	s.Detail = fmt.Sprintf("cell %s (%v) is %s, WireGuard peer %s at %s", name, m.Addr, m.State, short(p.PublicKey), p.Endpoint)
	switch age := v.now.Sub(p.LastHandshake).Round(time.Second); {
	case p.LastHandshake.IsZero():
		s.Detail += ", no handshake yet (the first packet starts one)"
	case age > staleHandshake:
		s.Detail += fmt.Sprintf(", last handshake %v ago: the session has expired, the next packet starts a handshake", age)
	default:
		s.Detail += fmt.Sprintf(", last handshake %v ago", age)
	}
	return s
}

func short(key string) string {
	if len(key) > 8 {
		return key[:8] + "…"
	}
	return key
}

// mtuStep reports the MTUs known on the path: the source containers'
// veths on this cell, the overlay TUN, what the local underlay link leaves
// for WireGuard (its MTU - 80), and the path MTU probed to each
// destination cell (pmtu.go).
func (v *traceView) mtuStep(srcs, dsts []mesh.Endpoint, res *cellapi.TraceResult) cellapi.TraceStep {
	s := cellapi.TraceStep{Step: "mtu", OK: true}
	if !v.overlayUp {
		s.Detail = "unknown: the data plane of this cell is not up"
		return s
	}
	path := v.overlayMTU
	parts := []string{fmt.Sprintf("overlay %d", v.overlayMTU)}
	for _, e := range srcs {
		if m, ok := v.vethMTU[e.Name]; ok {
			parts = append(parts, fmt.Sprintf("veth of %s %d", e.Name, m))
			path = min(path, m)
			if m > v.overlayMTU {
				s.OK = false
				parts = append(parts, fmt.Sprintf("container %s sends up to %d bytes, more than the overlay's %d: larger packets are dropped", e.Name, m, v.overlayMTU))
			}
		}
	}
	if v.underlayMTU > 0 {
		parts = append(parts, fmt.Sprintf("underlay %d (room for %d inside WireGuard)", v.underlayMTU, v.underlayMTU-80))
		if v.overlayMTU > v.underlayMTU-80 {
			s.OK = false
			parts = append(parts, fmt.Sprintf("the overlay MTU %d exceeds it: full-size packets do not fit the underlay", v.overlayMTU))
		}
		path = min(path, v.underlayMTU-80)
	}
	probed := false
	for _, cell := range cellsOf(dsts) {
		if cell == v.self {
			continue
		}
		p, ok := v.pathMTU[cell]
		switch {
		case !ok || p.State == pmtuProbing:
			parts = append(parts, fmt.Sprintf("path to cell %s not probed yet", cell))
		case p.State == pmtuNoReply:
			s.OK = false
			parts = append(parts, fmt.Sprintf("path to cell %s unknown: no probe of %d bytes was answered", cell, overlay.MinPathMTU))
		default:
			probed = true
			parts = append(parts, fmt.Sprintf("path to cell %s %d (probed %v ago)", cell, p.MTU, v.now.Sub(p.Probed).Round(time.Second)))
			if p.MTU < path {
				s.OK = false
				parts = append(parts, fmt.Sprintf("the underlay toward cell %s carries less than the overlay MTU: larger packets get ICMP fragmentation-needed from this cell and TCP's MSS is clamped to %d", cell, p.MTU-40))
			}
			path = min(path, p.MTU)
		}
	}
	res.PathMTU = path
	if probed {
		s.Detail = fmt.Sprintf("path MTU %d (%s)", path, strings.Join(parts, ", "))
	} else {
		s.Detail = fmt.Sprintf("path MTU %d as far as this cell knows (%s)", path, strings.Join(parts, ", "))
	}
	return s
}
