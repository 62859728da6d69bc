package cell

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine"
)

// Flow logs: the engine's flow-log records (policy/engine/flowlog.go: one per
// denied packet and per new allowed flow, rate-limited in the engine
// before anything is looked up) are formatted as JSON lines once and go
//
//   - to the agent's standard error while switched on (PUT /v1/flow-logs,
//     `weft flow-logs on`; off by default: they share stderr with the
//     agent's own log), and
//   - to a ring of the last flowRingSize lines, which GET
//     /v1/flow-logs/tail streams (chunked JSON lines) to `weft flow-logs
//     tail`: the backlog, then every new line, until the client goes.
//
// The engine's log is on while either needs it. A tailer that does not
// keep up loses lines (counted in a {"msg":"dropped",...} line), never
// slowing the engine's log goroutine.

// flowRingSize is how many flow-log lines the agent keeps for tailers.
const flowRingSize = 1024

// flowTailBuffer is how many lines a tailer may be behind before it loses
// some.
const flowTailBuffer = 256

// flowLogs is the agent's flow-log state. Safe for concurrent use.
type flowLogs struct {
	mu      sync.Mutex // serialises switching; guards the fields below
	stderr  bool
	tailers int
	sink    *flowSink
}

// flowLine is one formatted record with the fields tailers filter on.
type flowLine struct {
	line            []byte // JSON, newline-terminated; not modified after creation
	verdict         string
	srcApp, destApp string
	allowed         bool
	// What a live trace matches its probe on (trace_live.go).
	direction, protocol, src, dst, rule string
}

// flowSink is the slog.Handler the engine logs to. Handle is called by the
// engine's log goroutine; everything else by API handlers.
type flowSink struct {
	stderr io.Writer

	mu     sync.Mutex
	buf    bytes.Buffer // guarded by mu: the JSON handler's output
	json   slog.Handler // writes into buf
	toErr  bool         // guarded by mu
	ring   []flowLine   // guarded by mu: the last lines, oldest at next once full
	next   int          // guarded by mu
	tailer map[*flowTailer]struct{}
}

type flowTailer struct {
	ch      chan flowLine
	dropped uint64 // guarded by flowSink.mu
}

var _ slog.Handler = (*flowSink)(nil)

func newFlowSink(stderr io.Writer) *flowSink {
	s := &flowSink{stderr: stderr, tailer: map[*flowTailer]struct{}{}}
	s.json = slog.NewJSONHandler(&s.buf, nil)
	return s
}

func (s *flowSink) Enabled(context.Context, slog.Level) bool { return true }

// WithAttrs and WithGroup are not used by the engine; the sink ignores them.
func (s *flowSink) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *flowSink) WithGroup(string) slog.Handler      { return s }

// Handle formats r and hands the line to stderr (if on), the ring and the
// tailers; a tailer that is full loses it.
func (s *flowSink) Handle(ctx context.Context, r slog.Record) error {
	var l flowLine
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "verdict":
			l.verdict = a.Value.String()
		case "source_app":
			l.srcApp = a.Value.String()
		case "destination_app":
			l.destApp = a.Value.String()
		case "direction":
			l.direction = a.Value.String()
		case "protocol":
			l.protocol = a.Value.String()
		case "source":
			l.src = a.Value.String()
		case "destination":
			l.dst = a.Value.String()
		case "rule":
			l.rule = a.Value.String()
		}
		return true
	})
	v, _ := engine.ParseVerdict(l.verdict)
	l.allowed = v.Allowed() || l.verdict == overlay.GuardEgressAccepted // egresslog.go
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Reset()
	if err := s.json.Handle(ctx, r); err != nil {
		return err
	}
	l.line = bytes.Clone(s.buf.Bytes())
	if s.toErr {
		s.stderr.Write(l.line) //nolint:errcheck // a failing log must not stop the engine
	}
	if len(s.ring) < flowRingSize {
		s.ring = append(s.ring, l)
	} else {
		s.ring[s.next] = l
		s.next = (s.next + 1) % flowRingSize
	}
	for t := range s.tailer {
		select {
		case t.ch <- l:
		default:
			t.dropped++
		}
	}
	return nil
}

// subscribe adds a tailer and returns it with the lines in the ring,
// oldest first.
func (s *flowSink) subscribe() (*flowTailer, []flowLine) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := &flowTailer{ch: make(chan flowLine, flowTailBuffer)}
	s.tailer[t] = struct{}{}
	backlog := append(append([]flowLine(nil), s.ring[s.next:]...), s.ring[:s.next]...)
	return t, backlog
}

func (s *flowSink) unsubscribe(t *flowTailer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tailer, t)
}

// takeDropped returns and resets the lines t lost.
func (s *flowSink) takeDropped(t *flowTailer) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := t.dropped
	t.dropped = 0
	return n
}

// update switches the engine's log on while stderr or a tailer needs it.
// Needs f.mu.
func (a *Agent) updateFlowLogLocked() {
	f := &a.flows
	if f.sink == nil {
		f.sink = newFlowSink(os.Stderr)
	}
	f.sink.mu.Lock()
	f.sink.toErr = f.stderr
	f.sink.mu.Unlock()
	switch on := f.stderr || f.tailers > 0; {
	case on && !a.engine.FlowLogEnabled():
		a.engine.SetFlowLog(f.sink)
	case !on && a.engine.FlowLogEnabled():
		a.engine.SetFlowLog(nil)
	}
}

func (a *Agent) registerTraceRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/trace", a.handleTrace)
	mux.HandleFunc("GET /v1/flow-logs/tail", a.handleTailFlowLogs)
}

func (a *Agent) handleGetFlowLogs(w http.ResponseWriter, r *http.Request) {
	a.flows.mu.Lock()
	on := a.flows.stderr
	a.flows.mu.Unlock()
	writeJSON(w, http.StatusOK, cellapi.FlowLogState{Enabled: on})
}

func (a *Agent) handleSetFlowLogs(w http.ResponseWriter, r *http.Request) {
	var st cellapi.FlowLogState
	if !readJSON(w, r, &st) {
		return
	}
	a.flows.mu.Lock()
	a.flows.stderr = st.Enabled
	a.updateFlowLogLocked()
	a.flows.mu.Unlock()
	a.log.Info("flow logs switched", "enabled", st.Enabled)
	writeJSON(w, http.StatusOK, st)
}

// flowFilter selects the lines a tailer wants: app as source or
// destination, and a verdict name, "allowed" or "denied".
type flowFilter struct{ app, verdict string }

func (f flowFilter) match(l flowLine) bool {
	if f.app != "" && l.srcApp != f.app && l.destApp != f.app {
		return false
	}
	switch f.verdict {
	case "":
		return true
	case "allowed":
		return l.allowed
	case "denied":
		return !l.allowed
	}
	return l.verdict == f.verdict
}

// handleTailFlowLogs streams flow-log lines as chunked JSON lines:
// ?app=APP&verdict=V (a verdict name such as no_policy, or allowed or
// denied). It ends when the client goes or the server closes.
func (a *Agent) handleTailFlowLogs(w http.ResponseWriter, r *http.Request) {
	f := flowFilter{app: r.URL.Query().Get("app"), verdict: r.URL.Query().Get("verdict")}
	if f.app != "" {
		if err := (policy.Rule{Source: f.app, Destination: "x", Protocol: policy.ProtoICMP}).Validate(); err != nil {
			writeError(w, http.StatusBadRequest, "app: %v", err)
			return
		}
	}
	switch _, ok := engine.ParseVerdict(f.verdict); {
	case ok, f.verdict == "", f.verdict == "allowed", f.verdict == "denied",
		f.verdict == overlay.GuardEgress, f.verdict == overlay.GuardEgressAccepted:
	default:
		writeError(w, http.StatusBadRequest, "verdict %q: want allowed, denied or a verdict name (accept, no_policy, revoked, spoofed, unknown_source, fragment, egress, egress_accepted, ...)", f.verdict)
		return
	}
	a.flows.mu.Lock()
	a.flows.tailers++
	a.updateFlowLogLocked()
	sink := a.flows.sink
	a.flows.mu.Unlock()
	defer func() {
		a.flows.mu.Lock()
		a.flows.tailers--
		a.updateFlowLogLocked()
		a.flows.mu.Unlock()
	}()
	t, backlog := sink.subscribe()
	defer sink.unsubscribe(t)

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	bw := bufio.NewWriter(w)
	send := func(l flowLine) bool {
		if !f.match(l) {
			return true
		}
		_, err := bw.Write(l.line)
		return err == nil
	}
	for _, l := range backlog {
		if !send(l) {
			return
		}
	}
	for {
		if bw.Flush() != nil || rc.Flush() != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case l := <-t.ch:
			if !send(l) {
				return
			}
			// Send what else is queued in the same chunk.
			for more := true; more; {
				select {
				case l := <-t.ch:
					if !send(l) {
						return
					}
				default:
					more = false
				}
			}
			if n := sink.takeDropped(t); n > 0 {
				fmt.Fprintf(bw, "{\"msg\":\"dropped\",\"lines\":%d}\n", n)
			}
		}
	}
}
