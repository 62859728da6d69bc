package cell

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// Probe watches: the destination side of a live trace (trace_live.go). A
// cell watches its flow log for one probe's flow while a trace runs, armed
// and collected locally or by a peer cell's request through the tunnel
// (cellrpc.go).

// probeWatchTime is how long a cell keeps a probe watch.
const probeWatchTime = 10 * time.Second

// maxProbeWatches bounds the watches a cell keeps at once.
const maxProbeWatches = 32

// probeMatch selects a probe's flow-log records: the fields as the
// record writes them (policy/engine/flowlog.go).
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
