package cell

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
)

// Live traces (`weft trace --live`, docs/operations.md): the agent sends
// one real packet from a source container on this cell, inside the
// container's network namespace (overlay.InContainer), so that it meets
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

// probeWatchTime is how long a cell keeps a probe watch.
const probeWatchTime = 10 * time.Second

// maxProbeWatches bounds the watches a cell keeps at once.
const maxProbeWatches = 32

// probeMatch selects a probe's flow-log records: the fields as the
// record writes them (policy/flowlog.go).
type probeMatch struct {
	Protocol    string `json:"protocol"`
	Source      string `json:"source"`      // IP:PORT, or IP for icmp
	Destination string `json:"destination"` // IP:PORT, or IP for icmp
}

func (m probeMatch) matches(l flowLine) bool {
	return l.protocol == m.Protocol && l.src == m.Source && l.dst == m.Destination
}

// probeRecord is what a cell's engine logged of a probe.
type probeRecord struct {
	Verdict   string `json:"verdict"`
	Direction string `json:"direction"`
	Rule      string `json:"rule,omitempty"`
}

// probeWatch watches the flow log for one probe.
type probeWatch struct {
	match    probeMatch
	matched  chan struct{} // closed at the first matching record
	rec      probeRecord   // written before matched is closed
	dropped0 uint64        // the engine's FlowLogDropped when armed
}

// liveWatches are a cell's probe watches, by trace id.
type liveWatches struct {
	mu   sync.Mutex
	byID map[string]*probeWatch // guarded by mu
}

// armProbe starts watching the flow log for m under id (again: the watch
// there is). When it returns, every record of a packet judged after it is
// seen.
func (a *Agent) armProbe(id string, m probeMatch) (*probeWatch, error) {
	a.live.mu.Lock()
	if w := a.live.byID[id]; w != nil {
		a.live.mu.Unlock()
		return w, nil
	}
	if len(a.live.byID) >= maxProbeWatches {
		a.live.mu.Unlock()
		return nil, fmt.Errorf("%d live traces are under way on cell %s; try again in %v", maxProbeWatches, a.cfg.Name, probeWatchTime)
	}
	if a.live.byID == nil {
		a.live.byID = map[string]*probeWatch{}
	}
	w := &probeWatch{match: m, matched: make(chan struct{}), dropped0: a.engine.Counters().FlowLogDropped}
	a.live.byID[id] = w
	a.live.mu.Unlock()

	a.flows.mu.Lock()
	a.flows.tailers++
	a.updateFlowLogLocked()
	sink := a.flows.sink
	a.flows.mu.Unlock()
	t, _ := sink.subscribe()
	go func() {
		timer := time.NewTimer(probeWatchTime)
		defer timer.Stop()
		unsubscribe := func() {
			sink.unsubscribe(t)
			a.flows.mu.Lock()
			a.flows.tailers--
			a.updateFlowLogLocked()
			a.flows.mu.Unlock()
		}
	watch:
		for {
			select {
			case l := <-t.ch:
				if m.matches(l) {
					w.rec = probeRecord{Verdict: l.verdict, Direction: l.direction, Rule: l.rule}
					close(w.matched)
					break watch
				}
			case <-timer.C:
				unsubscribe()
				a.forgetProbe(id)
				return
			}
		}
		unsubscribe()
		<-timer.C // kept for requests that are resent
		a.forgetProbe(id)
	}()
	return w, nil
}

func (a *Agent) forgetProbe(id string) {
	a.live.mu.Lock()
	delete(a.live.byID, id)
	a.live.mu.Unlock()
}

// probeResult is what a cell saw of a probe.
type probeResult struct {
	Cell           string      `json:"cell"`
	Seen           bool        `json:"seen"`
	Record         probeRecord `json:"record"`
	FlowLogDropped uint64      `json:"flow_log_dropped"` // records the rate limit suppressed meanwhile
	Error          string      `json:"error,omitempty"`
}

// collectProbe waits up to wait for the record of watch id.
func (a *Agent) collectProbe(ctx context.Context, id string, wait time.Duration) probeResult {
	res := probeResult{Cell: a.cfg.Name}
	a.live.mu.Lock()
	w := a.live.byID[id]
	a.live.mu.Unlock()
	if w == nil {
		res.Error = "no probe watch " + id + " on cell " + a.cfg.Name
		return res
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.matched:
		res.Seen, res.Record = true, w.rec
	case <-t.C:
	case <-ctx.Done():
	}
	res.FlowLogDropped = a.engine.Counters().FlowLogDropped - w.dropped0
	return res
}

// cellMsg is a cell-to-cell request (cellrpc.go).
type cellMsg struct {
	Op     string      `json:"op"` // arm_probe or collect_probe
	ID     string      `json:"id"`
	Match  *probeMatch `json:"match,omitempty"`
	WaitMS int         `json:"wait_ms,omitempty"`
}

// serveCellCall answers a request of a peer cell.
func (a *Agent) serveCellCall(body []byte) []byte {
	var m cellMsg
	res := probeResult{Cell: a.cfg.Name}
	switch err := json.Unmarshal(body, &m); {
	case err != nil:
		res.Error = "bad request: " + err.Error()
	case m.Op == "arm_probe" && m.Match != nil:
		if _, err := a.armProbe(m.ID, *m.Match); err != nil {
			res.Error = err.Error()
		}
	case m.Op == "collect_probe":
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res = a.collectProbe(ctx, m.ID, min(time.Duration(m.WaitMS)*time.Millisecond, 3*time.Second))
		cancel()
	default:
		res.Error = fmt.Sprintf("unknown request %q", m.Op)
	}
	out, _ := json.Marshal(res)
	return out
}

// callCell sends m to the cell holding subnet and decodes its answer.
func (a *Agent) callCell(ctx context.Context, subnet netip.Prefix, m cellMsg, timeout time.Duration, tries int) (probeResult, error) {
	body, _ := json.Marshal(m)
	ans, err := a.cellCall(ctx, subnet, body, timeout, tries)
	if err != nil {
		return probeResult{}, err
	}
	var res probeResult
	if err := json.Unmarshal(ans, &res); err != nil {
		return probeResult{}, fmt.Errorf("bad answer: %v", err)
	}
	if res.Error != "" {
		return res, errors.New(res.Error)
	}
	return res, nil
}

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
func (a *Agent) liveTrace(ctx context.Context, req TraceRequest) (TraceResult, error) {
	res := TraceResult{Cell: a.cfg.Name, Live: true, Sources: []TraceEndpoint{}, Destinations: []TraceEndpoint{}}
	proto, err := policy.ParseProtocol(req.Protocol)
	switch {
	case err != nil || proto == policy.ProtoAll:
		return res, badTrace(http.StatusBadRequest, "protocol %q: a live probe is tcp, udp or icmp", req.Protocol)
	case proto == policy.ProtoICMP && req.Port != 0:
		return res, badTrace(http.StatusBadRequest, "port %d: icmp has no ports", req.Port)
	case proto != policy.ProtoICMP && req.Port == 0:
		return res, badTrace(http.StatusBadRequest, "port is required for %s (1-65535)", proto)
	case req.Destination == "":
		return res, badTrace(http.StatusBadRequest, "destination is required: an app name or an IPv4 address")
	case req.Source == "" && req.FromContainer == "":
		return res, badTrace(http.StatusBadRequest, "source is required: an app name, or from_container")
	case req.SourceIP != "" && proto == policy.ProtoICMP:
		return res, badTrace(http.StatusBadRequest, "source_ip: a spoofed probe is tcp or udp")
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
	res.step(TraceStep{Step: "source", OK: true, Detail: srcDetail})

	// Where the packet should be judged: a peer cell, this one, or the
	// guard's egress chain (outside the overlay).
	var peer *mesh.Node
	inOverlay := a.cfg.OverlayCIDR.Contains(dst)
	if inOverlay {
		for _, m := range a.mesh.Members() {
			if m.Subnet.IsValid() && m.Subnet.Contains(dst) && !m.Self {
				peer = &m
				break
			}
		}
	}
	var remoteErr error
	if peer != nil {
		_, remoteErr = a.callCell(ctx, peer.Subnet, cellMsg{Op: "arm_probe", ID: p.id, Match: ptr(p.match())}, 500*time.Millisecond, 3)
	}
	if _, err := a.armProbe(p.id, p.match()); err != nil {
		return res, badTrace(http.StatusServiceUnavailable, "%v", err)
	}
	before, gerr := ov.GuardCounters()
	out := sendProbe(p)
	after, gerr2 := ov.GuardCounters()
	local := a.collectProbe(ctx, p.id, time.Second)

	// The source guard.
	guardStep := TraceStep{Step: "source_guard", OK: true}
	moved := guardDelta(before, after)
	switch {
	case gerr != nil || gerr2 != nil:
		guardStep.OK, guardStep.Detail = false, fmt.Sprintf("cannot read the guard's counters: %v", errors.Join(gerr, gerr2))
	case len(moved) > 0 && !local.Seen && moved[0].drop:
		guardStep.OK, guardStep.Code = false, moved[0].name
		guardStep.Detail = fmt.Sprintf("the guard (table inet weft) dropped the probe on %s: counter %s moved by %d during the probe", overlay.HostVethName(src.Name), moved[0].name, moved[0].n)
	case local.Seen:
		guardStep.Detail = "passed the guard of " + overlay.HostVethName(src.Name) + " (this cell's engine logged the probe)"
	case !inOverlay && slices.ContainsFunc(moved, func(d counterDelta) bool { return d.name == overlay.GuardEgressAccepted }):
		guardStep.Detail = fmt.Sprintf("an egress rule let the probe out of the overlay to %v (counter %s moved)", dst, overlay.GuardEgressAccepted)
	default:
		guardStep.OK = false
		guardStep.Detail = "no guard counter moved, and this cell's engine logged nothing of the probe"
	}
	res.step(guardStep)

	// This cell's engine: outbound (to a peer), or local (hair-pinned:
	// this cell is also the destination's).
	if inOverlay && guardStep.Code == "" {
		s := TraceStep{Step: "source_cell"}
		switch {
		case local.Seen && local.Record.Verdict == policy.Accept.String() && local.Record.Direction == "outbound":
			s.OK = true
			s.Detail = "this cell's engine passed the probe to WireGuard"
			if peer != nil {
				s.Detail += " for cell " + peer.Name
			}
		case local.Seen && local.Record.Direction == "local":
			s.Step = "destination_cell"
			s.OK = local.Record.Verdict == policy.Accept.String()
			s.Detail = fmt.Sprintf("the destination is on this cell: its engine's verdict %s", local.Record.Verdict)
			if local.Record.Rule != "" {
				s.Detail += " by rule " + local.Record.Rule
			}
			if !s.OK {
				s.Code = local.Record.Verdict
			}
		case local.Seen:
			s.Code = local.Record.Verdict
			s.Detail = fmt.Sprintf("this cell's engine dropped the probe (%s, %s)", local.Record.Verdict, local.Record.Direction)
		default:
			s.Detail = "this cell's engine logged nothing of the probe" + droppedNote(local.FlowLogDropped)
		}
		res.step(s)
	}

	// The tunnel and the destination cell's engine.
	var remote probeResult
	if peer != nil && guardStep.Code == "" {
		if remoteErr == nil {
			remote, remoteErr = a.callCell(ctx, peer.Subnet, cellMsg{Op: "collect_probe", ID: p.id, WaitMS: 1500}, 2*time.Second, 2)
		}
		t := TraceStep{Step: "tunnel", OK: remoteErr == nil}
		if remoteErr != nil {
			t.Detail = fmt.Sprintf("cell %s did not answer through the tunnel (%v): its verdict is unknown", peer.Name, remoteErr)
		} else {
			t.Detail = fmt.Sprintf("cell %s answers through the tunnel", peer.Name)
		}
		res.step(t)
		if remoteErr == nil {
			s := TraceStep{Step: "destination_cell"}
			switch {
			case remote.Seen && remote.Record.Verdict == policy.Accept.String():
				s.OK = true
				s.Detail = fmt.Sprintf("cell %s's engine accepted the probe", peer.Name)
				if remote.Record.Rule != "" {
					s.Detail += " by rule " + remote.Record.Rule
				}
			case remote.Seen:
				s.Code = remote.Record.Verdict
				s.Detail = fmt.Sprintf("cell %s's engine dropped the probe (%s)", peer.Name, remote.Record.Verdict)
			case local.Seen:
				s.Code = liveLost
				s.Detail = fmt.Sprintf("the probe left this cell, and cell %s's engine logged nothing of it%s", peer.Name, droppedNote(remote.FlowLogDropped))
			default:
				s.Detail = fmt.Sprintf("cell %s's engine logged nothing of the probe%s", peer.Name, droppedNote(remote.FlowLogDropped))
			}
			res.step(s)
		}
	}
	if inOverlay && peer == nil && !dstEP.IP.IsValid() && !(local.Seen && local.Record.Direction == "local") {
		res.step(TraceStep{Step: "destination_cell", Detail: fmt.Sprintf("no live cell holds the subnet of %v", dst)})
	}

	// What came back to the container.
	res.step(deliveryStep(out, res.Steps))
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
func (a *Agent) liveSource(req TraceRequest, eps []mesh.Endpoint) (mesh.Endpoint, error) {
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
func liveDestination(req TraceRequest, eps []mesh.Endpoint) (netip.Addr, mesh.Endpoint, error) {
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
func deliveryStep(out probeOutcome, steps []TraceStep) TraceStep {
	s := TraceStep{Step: "delivery"}
	accepted := slices.ContainsFunc(steps, func(s TraceStep) bool { return s.Step == "destination_cell" && s.OK })
	denied := slices.ContainsFunc(steps, func(s TraceStep) bool { return s.Code != "" })
	egress := slices.ContainsFunc(steps, func(s TraceStep) bool {
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
