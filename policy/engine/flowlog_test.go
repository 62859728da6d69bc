package engine

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/weft-net/weft/policy/engine/pkttest"
)

// lineWriter hands every written line to a channel.
type lineWriter chan string

func (w lineWriter) Write(b []byte) (int, error) { w <- string(b); return len(b), nil }

// jsonLines is a slog JSON handler writing to w.
func jsonLines(w lineWriter) slog.Handler { return slog.NewJSONHandler(w, nil) }

func TestFlowLog(t *testing.T) {
	e := newTestEngine(t, Config{FlowLogRate: 3})
	if e.FlowLogEnabled() {
		t.Fatal("flow log on by default")
	}
	e.Inbound(syn(ap(ipA, 1), ap(ipB, 1))) // denied while off: no line
	w := make(lineWriter, 100)
	e.SetFlowLog(jsonLines(w))
	if !e.FlowLogEnabled() {
		t.Fatal("FlowLogEnabled = false after SetFlowLog(w)")
	}
	run(t, e, []step{
		{"new allowed", in, syn(ap(ipA, 40000), ap(ipB, 8080)), Accept},
		{"established: no line", in, ack(ap(ipA, 40000), ap(ipB, 8080)), Accept},
		{"denied", in, pkttest.UDP(ap(ipA6, 5), ap(ipB6, 54), nil), DropNoPolicy},
		{"ping", in, pkttest.ICMPEcho(ipX, ipB, 1, 1, false), DropUnknownSource},
		{"over the rate", in, syn(ap(ipA, 2), ap(ipB, 2)), DropNoPolicy},
	})
	e.SetFlowLog(nil) // flushes
	if e.FlowLogEnabled() {
		t.Fatal("FlowLogEnabled after SetFlowLog(nil)")
	}
	close(w)
	var lines []map[string]string
	for l := range w {
		if !strings.HasSuffix(l, "}\n") {
			t.Errorf("line %q does not end in a newline", l)
		}
		var m map[string]string
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if m["time"] == "" {
			t.Errorf("line %q has no time", l)
		}
		if m["level"] != "INFO" || m["msg"] != "flow" {
			t.Errorf("line %q: want level INFO, msg flow", l)
		}
		delete(m, "time")
		lines = append(lines, m)
	}
	want := []map[string]string{
		{"verdict": "accept", "direction": "inbound", "rule": "appA>appB/tcp/8080-8080", "protocol": "tcp", "source_app": "appA", "source": "10.255.2.10:40000", "destination_app": "appB", "destination": "10.255.1.20:8080"},
		{"verdict": "no_policy", "direction": "inbound", "rule": "", "protocol": "udp", "source_app": "appA", "source": "[fd00:2::10]:5", "destination_app": "appB", "destination": "[fd00:1::20]:54"},
		{"verdict": "unknown_source", "direction": "inbound", "rule": "", "protocol": "icmp", "source_app": "", "source": "10.255.2.99", "destination_app": "appB", "destination": "10.255.1.20"},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d: %v", len(lines), len(want), lines)
	}
	for i := range want {
		for k, v := range want[i] {
			if lines[i][k] != v {
				t.Errorf("line %d: %s = %q, want %q", i, k, lines[i][k], v)
			}
		}
	}
	if c := e.Counters(); c.FlowLogLines != 3 || c.FlowLogDropped != 1 {
		t.Errorf("lines %d dropped %d, want 3 and 1", c.FlowLogLines, c.FlowLogDropped)
	}
}

// TestFlowLogNoAllocsOff: with the log off, denied and new flows allocate
// nothing (TestNoAllocs covers the rest of the path).
func TestFlowLogNoAllocs(t *testing.T) {
	e := newTestEngine(t, Config{FlowLogRate: 1})
	e.SetFlowLog(jsonLines(make(lineWriter, 10)))
	defer e.SetFlowLog(nil)
	pkt := syn(ap(ipA, 1), ap(ipB, 1))
	e.Inbound(pkt) // the one line the rate allows
	// Over the rate, a denied packet costs no allocation either.
	if n := testing.AllocsPerRun(1000, func() { e.Inbound(pkt) }); n != 0 {
		t.Errorf("%v allocs per rate-limited denied packet", n)
	}
}
