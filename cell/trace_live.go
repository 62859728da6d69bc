package cell

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine"
)

// Live traces (`weft trace --live`, docs/operations.md): the agent sends
// one real packet from a source container on this cell, inside the
// container's network namespace (attach.InContainer), so that it meets
// the guard, this cell's engine, the tunnel and the destination cell's
// engine as the container's own traffic does. Where it went is learned
// from what each cell already keeps:
//
//   - the guard's named counters (spoofed, to_cell, egress, ...), read
//     before and after the probe: the guard drops in the kernel, before
//     the engine sees anything;
//   - the engine's flow-log record of the probe's flow (one per new
//     allowed flow and per denied packet), on this cell and on the
//     destination cell. Each cell watches its flow log for the probe's
//     addresses and ports while the trace runs (a "probe watch", which
//     switches the log on like a tailer does).
//
// The destination cell is asked to watch, and later for what it saw, by
// cell-to-cell requests through the tunnel (cellrpc.go); answered, they
// also show that the tunnel carries packets both ways. The flow log's rate
// limit may suppress a record under a flood of denials: the answer then
// says so (flow_log_dropped) rather than guess.

// Codes of a live trace that are not engine verdicts or guard counters.
const (
	liveDelivered = "delivered"
	liveUnknown   = "unknown"
	liveLost      = "lost" // left this cell, and the destination cell saw nothing
)

// liveProbe is the probe a live trace sends.
type liveProbe struct {
	id        string
	container string // the source container's name (attachment id)
	proto     policy.Protocol
	src       netip.Addr // the container's address, or the spoofed one
	spoofed   bool
	sport     uint16 // tcp/udp; icmp: the echo identifier
	dst       netip.Addr
	dport     uint16
}

func (p *liveProbe) match() probeMatch {
	m := probeMatch{Protocol: p.proto.String(), Source: p.src.String(), Destination: p.dst.String()}
	if p.proto != policy.ProtoICMP {
		m.Source = netip.AddrPortFrom(p.src, p.sport).String()
		m.Destination = netip.AddrPortFrom(p.dst, p.dport).String()
	}
	return m
}

func (p *liveProbe) String() string {
	m := p.match()
	return m.Protocol + " " + m.Source + " -> " + m.Destination
}

// liveTrace sends one probe as req says and reports where it went.
func (a *Agent) liveTrace(ctx context.Context, req cellapi.TraceRequest) (cellapi.TraceResult, error) {
	res := cellapi.TraceResult{Cell: a.cfg.Name, Live: true, Sources: []cellapi.TraceEndpoint{}, Destinations: []cellapi.TraceEndpoint{}}
	proto, err := validLive(req)
	if err != nil {
		return res, err
	}
	eps := a.mesh.Endpoints()
	src, err := a.liveSource(req, eps)
	if err != nil {
		return res, err
	}
	res.Sources = append(res.Sources, traceEndpoint(src))
	dst, dstEP, err := liveDestination(req, eps)
	if err != nil {
		return res, err
	}
	if dstEP.IP.IsValid() {
		res.Destinations = append(res.Destinations, traceEndpoint(dstEP))
	}
	ov := a.overlay()
	if ov == nil {
		return res, badTrace(http.StatusServiceUnavailable, "cell %s has no data plane yet (no subnet lease): nothing can be sent", a.cfg.Name)
	}

	p := &liveProbe{id: randomID(), container: src.Name, proto: proto, src: src.IP, dst: dst, dport: req.Port}
	if req.SourceIP != "" {
		ip, err := netip.ParseAddr(req.SourceIP)
		if err != nil || !ip.Unmap().Is4() {
			return res, badTrace(http.StatusBadRequest, "source_ip %q: want an IPv4 address", req.SourceIP)
		}
		p.src, p.spoofed = ip.Unmap(), ip.Unmap() != src.IP
	}
	var rnd [2]byte
	rand.Read(rnd[:])
	p.sport = 20000 + binary.BigEndian.Uint16(rnd[:])%40000
	res.Probe = p.String()
	srcDetail := fmt.Sprintf("container %s of app %s (%v) on this cell; probe %s sent inside its network namespace", src.Name, src.App, src.IP, p)
	if p.spoofed {
		srcDetail += fmt.Sprintf(", with the spoofed source %v", p.src)
	}
	addStep(&res, cellapi.TraceStep{Step: "source", OK: true, Detail: srcDetail})

	// Where the packet should be judged: a peer cell, this one, or the
	// guard's egress chain (outside the overlay).
	run := &probeRun{p: p, veth: attach.HostVethName(src.Name), inOverlay: a.cfg.OverlayCIDR.Contains(dst), dstKnown: dstEP.IP.IsValid()}
	if run.inOverlay {
		for _, m := range a.mesh.Members() {
			if m.Subnet.IsValid() && m.Subnet.Contains(dst) && !m.Self {
				run.peer = &m
				break
			}
		}
	}
	if run.peer != nil {
		_, run.remoteErr = a.callCell(ctx, run.peer.Subnet, cellMsg{Op: "arm_probe", ID: p.id, Match: ptr(p.match())}, 500*time.Millisecond, 3)
	}
	if _, err := a.armProbe(p.id, p.match()); err != nil {
		return res, badTrace(http.StatusServiceUnavailable, "%v", err)
	}
	before, gerr := ov.GuardCounters()
	out := sendProbe(p)
	after, gerr2 := ov.GuardCounters()
	run.moved, run.guardErr = guardDelta(before, after), errors.Join(gerr, gerr2)
	run.local = a.collectProbe(ctx, p.id, time.Second)
	if run.peer != nil && run.remoteErr == nil {
		run.remote, run.remoteErr = a.callCell(ctx, run.peer.Subnet, cellMsg{Op: "collect_probe", ID: p.id, WaitMS: 1500}, 2*time.Second, 2)
	}

	addStep(&res, run.guardStep())
	if run.inOverlay && res.Steps[len(res.Steps)-1].Code == "" {
		addStep(&res, run.sourceCellStep())
		if run.peer != nil {
			for _, s := range run.remoteSteps() {
				addStep(&res, s)
			}
		} else if !run.dstKnown && !run.hairpinned() {
			addStep(&res, cellapi.TraceStep{Step: "destination_cell", Detail: fmt.Sprintf("no live cell holds the subnet of %v", dst)})
		}
	}
	addStep(&res, deliveryStep(out, res.Steps)) // what came back to the container
	res.Verdict, res.Reason = liveUnknown, "no step shows where the probe went"
	for _, s := range res.Steps {
		if s.Code != "" {
			res.Verdict, res.Reason, res.DroppedAt = s.Code, s.Step+": "+s.Detail, s.Step
			return res, nil
		}
	}
	if d := res.Steps[len(res.Steps)-1]; d.OK {
		res.Verdict, res.Reason = liveDelivered, d.Detail
	}
	return res, nil
}

// validLive checks a live trace's request and returns its protocol:
// validTrace's checks, and a spoofed source only for tcp and udp.
func validLive(req cellapi.TraceRequest) (policy.Protocol, error) {
	proto, err := validTrace(req)
	if err == nil && req.SourceIP != "" && proto == policy.ProtoICMP {
		err = badTrace(http.StatusBadRequest, "source_ip: a spoofed probe is tcp or udp")
	}
	return proto, err
}

// probeRun is what a live trace observed of its probe.
type probeRun struct {
	p         *liveProbe
	veth      string     // the source container's host veth
	inOverlay bool       // the destination is an overlay address
	dstKnown  bool       // a registered container has it
	peer      *mesh.Node // the destination's cell, if another one
	moved     []counterDelta
	guardErr  error
	local     probeResult // this cell's flow-log record
	remote    probeResult // the peer's, asked through the tunnel
	remoteErr error
}

func (r *probeRun) hairpinned() bool { return r.local.Seen && r.local.Record.Direction == "local" }

// guardStep: a drop counter of the guard moved and the engine saw nothing
// (spoofed, to_cell, egress, not_ipv4), or the probe passed it.
func (r *probeRun) guardStep() cellapi.TraceStep {
	s := cellapi.TraceStep{Step: "source_guard", OK: true}
	switch {
	case r.guardErr != nil:
		s.OK, s.Detail = false, fmt.Sprintf("cannot read the guard's counters: %v", r.guardErr)
	case len(r.moved) > 0 && !r.local.Seen && r.moved[0].drop:
		s.OK, s.Code = false, r.moved[0].name
		s.Detail = fmt.Sprintf("the guard (table inet weft) dropped the probe on %s: counter %s moved by %d during the probe", r.veth, r.moved[0].name, r.moved[0].n)
	case r.local.Seen:
		s.Detail = "passed the guard of " + r.veth + " (this cell's engine logged the probe)"
	case !r.inOverlay && slices.ContainsFunc(r.moved, func(d counterDelta) bool { return d.name == overlay.GuardEgressAccepted }):
		s.Detail = fmt.Sprintf("an egress rule let the probe out of the overlay to %v (counter %s moved)", r.p.dst, overlay.GuardEgressAccepted)
	default:
		s.OK = false
		s.Detail = "no guard counter moved, and this cell's engine logged nothing of the probe"
	}
	return s
}

// sourceCellStep is this cell's engine: outbound (to a peer), or local
// (hair-pinned: this cell is also the destination's).
func (r *probeRun) sourceCellStep() cellapi.TraceStep {
	s := cellapi.TraceStep{Step: "source_cell"}
	rec := r.local.Record
	switch {
	case r.local.Seen && rec.Verdict == engine.Accept.String() && rec.Direction == "outbound":
		s.OK = true
		s.Detail = "this cell's engine passed the probe to WireGuard"
		if r.peer != nil {
			s.Detail += " for cell " + r.peer.Name
		}
	case r.hairpinned():
		s.Step = "destination_cell"
		s.OK = rec.Verdict == engine.Accept.String()
		s.Detail = fmt.Sprintf("the destination is on this cell: its engine's verdict %s", rec.Verdict)
		if rec.Rule != "" {
			s.Detail += " by rule " + rec.Rule
		}
		if !s.OK {
			s.Code = rec.Verdict
		}
	case r.local.Seen:
		s.Code = rec.Verdict
		s.Detail = fmt.Sprintf("this cell's engine dropped the probe (%s, %s)", rec.Verdict, rec.Direction)
	default:
		s.Detail = "this cell's engine logged nothing of the probe" + droppedNote(r.local.FlowLogDropped)
	}
	return s
}

// remoteSteps are the tunnel (did the peer answer) and the peer's engine.
func (r *probeRun) remoteSteps() []cellapi.TraceStep {
	name := r.peer.Name
	if r.remoteErr != nil {
		return []cellapi.TraceStep{{Step: "tunnel", Detail: fmt.Sprintf("cell %s did not answer through the tunnel (%v): its verdict is unknown", name, r.remoteErr)}}
	}
	t := cellapi.TraceStep{Step: "tunnel", OK: true, Detail: fmt.Sprintf("cell %s answers through the tunnel", name)}
	s := cellapi.TraceStep{Step: "destination_cell"}
	rec := r.remote.Record
	switch {
	case r.remote.Seen && rec.Verdict == engine.Accept.String():
		s.OK = true
		s.Detail = fmt.Sprintf("cell %s's engine accepted the probe", name)
		if rec.Rule != "" {
			s.Detail += " by rule " + rec.Rule
		}
	case r.remote.Seen:
		s.Code = rec.Verdict
		s.Detail = fmt.Sprintf("cell %s's engine dropped the probe (%s)", name, rec.Verdict)
	case r.local.Seen:
		s.Code = liveLost
		s.Detail = fmt.Sprintf("the probe left this cell, and cell %s's engine logged nothing of it%s", name, droppedNote(r.remote.FlowLogDropped))
	default:
		s.Detail = fmt.Sprintf("cell %s's engine logged nothing of the probe%s", name, droppedNote(r.remote.FlowLogDropped))
	}
	return []cellapi.TraceStep{t, s}
}

func ptr[T any](v T) *T { return &v }

func randomID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func droppedNote(n uint64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (its flow log's rate limit suppressed %d records meanwhile: the probe's may be one)", n)
}

// liveSource is the container the probe leaves from: one on this cell.
func (a *Agent) liveSource(req cellapi.TraceRequest, eps []mesh.Endpoint) (mesh.Endpoint, error) {
	if req.FromContainer != "" {
		ip, ipErr := netip.ParseAddr(req.FromContainer)
		i := slices.IndexFunc(eps, func(e mesh.Endpoint) bool {
			return e.Name == req.FromContainer || ipErr == nil && e.IP == ip.Unmap()
		})
		if i < 0 {
			return mesh.Endpoint{}, badTrace(http.StatusNotFound, "no container %q (name or overlay IP) in the endpoint registry", req.FromContainer)
		}
		e := eps[i]
		switch {
		case req.Source != "" && req.Source != e.App:
			return e, badTrace(http.StatusBadRequest, "container %s runs app %s, not %s", req.FromContainer, e.App, req.Source)
		case e.Cell != a.cfg.Name:
			return e, badTrace(http.StatusConflict, "container %s (app %s, %v) runs on cell %s, not %s: a live probe leaves from the source container's own cell, so run weft trace --live on cell %s",
				e.Name, e.App, e.IP, e.Cell, a.cfg.Name, e.Cell)
		}
		return e, nil
	}
	if err := (policy.Rule{Source: req.Source, Destination: "x", Protocol: policy.ProtoICMP}).Validate(); err != nil {
		return mesh.Endpoint{}, badTrace(http.StatusBadRequest, "%v", err)
	}
	var here, elsewhere []string
	var first mesh.Endpoint
	for _, e := range eps {
		switch {
		case e.App != req.Source:
		case e.Cell == a.cfg.Name:
			if len(here) == 0 || e.Name < first.Name {
				first = e
			}
			here = append(here, e.Name)
		default:
			elsewhere = append(elsewhere, e.Cell)
		}
	}
	switch {
	case len(here) > 0:
		return first, nil
	case len(elsewhere) == 0:
		return mesh.Endpoint{}, badTrace(http.StatusNotFound, "app %s has no container registered on any cell: there is nothing to send a probe from", req.Source)
	default:
		slices.Sort(elsewhere)
		return mesh.Endpoint{}, badTrace(http.StatusConflict, "app %s has no container on cell %s (its containers run on cell %s): a live probe leaves from a source container on the cell that runs the trace, so run weft trace --live there",
			req.Source, a.cfg.Name, strings.Join(slices.Compact(elsewhere), ", "))
	}
}

// liveDestination is the address the probe goes to, and its container if
// one is registered.
func liveDestination(req cellapi.TraceRequest, eps []mesh.Endpoint) (netip.Addr, mesh.Endpoint, error) {
	if ip, err := netip.ParseAddr(req.Destination); err == nil {
		ip = ip.Unmap()
		if !ip.Is4() {
			return ip, mesh.Endpoint{}, badTrace(http.StatusBadRequest, "destination %v: weft's overlay and probes are IPv4", ip)
		}
		i := slices.IndexFunc(eps, func(e mesh.Endpoint) bool { return e.IP == ip })
		if i < 0 {
			return ip, mesh.Endpoint{}, nil
		}
		return ip, eps[i], nil
	}
	if err := (policy.Rule{Source: "x", Destination: req.Destination, Protocol: policy.ProtoICMP}).Validate(); err != nil {
		return netip.Addr{}, mesh.Endpoint{}, badTrace(http.StatusBadRequest, "%v", err)
	}
	var best mesh.Endpoint
	for _, e := range eps {
		if e.App == req.Destination && (!best.IP.IsValid() || e.IP.Less(best.IP)) {
			best = e
		}
	}
	if !best.IP.IsValid() {
		return netip.Addr{}, best, badTrace(http.StatusNotFound, "app %s has no container registered on any cell: there is nothing to send a probe to", req.Destination)
	}
	return best.IP, best, nil
}

// counterDelta is a guard counter that moved during a probe.
type counterDelta struct {
	name string
	n    uint64
	drop bool
}

// guardDelta lists the counters that moved, drops first.
func guardDelta(b, a overlay.GuardCounters) []counterDelta {
	var out []counterDelta
	add := func(name string, x, y uint64, drop bool) {
		if y > x {
			out = append(out, counterDelta{name, y - x, drop})
		}
	}
	add(overlay.GuardSpoofed, b.Spoofed, a.Spoofed, true)
	add(overlay.GuardToCell, b.ToCell, a.ToCell, true)
	add(overlay.GuardNotIPv4, b.NotIPv4, a.NotIPv4, true)
	add(overlay.GuardEgress, b.Egress, a.Egress, true)
	add(overlay.GuardEgressAccepted, b.EgressAccepted, a.EgressAccepted, false)
	return out
}

// deliveryStep reads what came back to the source container, in the light
// of the steps before it.
func deliveryStep(out probeOutcome, steps []cellapi.TraceStep) cellapi.TraceStep {
	s := cellapi.TraceStep{Step: "delivery"}
	accepted := slices.ContainsFunc(steps, func(s cellapi.TraceStep) bool { return s.Step == "destination_cell" && s.OK })
	denied := slices.ContainsFunc(steps, func(s cellapi.TraceStep) bool { return s.Code != "" })
	egress := slices.ContainsFunc(steps, func(s cellapi.TraceStep) bool {
		return s.Step == "source_guard" && s.OK && strings.Contains(s.Detail, "egress rule")
	})
	switch {
	case out.err != nil:
		s.Detail = "the probe could not be sent: " + out.err.Error()
	case out.kind == outcomeAnswered:
		s.OK, s.Detail = true, "delivered: "+out.detail
	case out.kind == outcomeRefused && (accepted || egress):
		s.OK, s.Detail = true, "delivered: the destination refused it ("+out.detail+"): nothing listens there"
	case out.kind == outcomeRefused && denied:
		s.Detail = "the source saw " + out.detail + ": weft's answer to a denied packet"
	case out.kind == outcomeRefused:
		s.Detail = "the source saw " + out.detail
	case accepted:
		s.OK, s.Detail = true, "delivered to the destination's veth; "+out.detail
	default:
		s.Detail = out.detail
	}
	return s
}
