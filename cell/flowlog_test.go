package cell

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/policy/engine/pkttest"
)

// waitUntil polls cond until it holds or 5 s pass.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func synTo(src, dst netip.Addr, sport, dport uint16) []byte {
	return pkttest.TCP(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), pkttest.SYN, 1, 0, nil)
}

// TestFlowLogTail: GET /v1/flow-logs/tail through a real server streams
// the engine's flow-log lines as JSON lines with direction, rule and the
// filters applied; the engine logs only while someone tails (or the log
// is on); a bad filter is a 400 with the reason.
func TestFlowLogTail(t *testing.T) {
	a, c, subnet := leasedAgent(t)
	ipA, ipB := subnet.Addr().Next().Next(), subnet.Addr().Next().Next().Next()
	for _, e := range []mesh.Endpoint{{IP: ipA, App: "appA", Name: "ca"}, {IP: ipB, App: "appB", Name: "cb"}} {
		if err := a.mesh.AddEndpoint(e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.mesh.AddPolicy(tcpRule("appA", "appB", 8080, 8080)); err != nil {
		t.Fatal(err)
	}
	a.reconcileNow()
	if a.engine.FlowLogEnabled() {
		t.Fatal("flow log on before anyone tails")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- c.TailFlowLogs(ctx, "appA", "", pw); pw.Close() }()
	waitUntil(t, "the tail to switch the flow log on", a.engine.FlowLogEnabled)

	a.engine.Outbound(synTo(ipA, ipB, 40000, 9090)) // hair-pinned, no rule
	a.engine.Outbound(synTo(ipA, ipB, 40001, 8080)) // hair-pinned, allowed
	sc := bufio.NewScanner(pr)
	var got []map[string]string
	for len(got) < 2 && sc.Scan() {
		var m map[string]string
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, m)
	}
	want := []map[string]string{
		{"verdict": "no_policy", "direction": "local", "source_app": "appA", "destination_app": "appB", "destination": ipB.String() + ":9090", "rule": ""},
		{"verdict": "accept", "direction": "local", "source_app": "appA", "rule": "appA>appB/tcp/8080-8080"},
	}
	if len(got) != 2 {
		t.Fatalf("got %d lines, want 2: %v", len(got), got)
	}
	for i := range want {
		for k, v := range want[i] {
			if got[i][k] != v {
				t.Errorf("line %d: %s = %q, want %q (%v)", i, k, got[i][k], v, got[i])
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("tail ended with %v", err)
	}
	waitUntil(t, "the flow log to switch off after the tail", func() bool { return !a.engine.FlowLogEnabled() })

	// A second tail with a verdict filter gets the kept lines it matches.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	pr2, pw2 := io.Pipe()
	go func() { c.TailFlowLogs(ctx2, "", "denied", pw2); pw2.Close() }()
	sc = bufio.NewScanner(pr2)
	if !sc.Scan() || !strings.Contains(sc.Text(), `"verdict":"no_policy"`) {
		t.Fatalf("kept denied line: %q", sc.Text())
	}
	cancel2()
	// A live tail keeps the engine's log on; the on/off checks below
	// start once the server has seen this one end.
	waitUntil(t, "the flow log to switch off after the second tail", func() bool { return !a.engine.FlowLogEnabled() })

	for _, q := range []struct{ app, verdict, want string }{
		{"", "nonsense", `verdict "nonsense"`},
		{"a b", "", "invalid source app"},
	} {
		err := c.TailFlowLogs(context.Background(), q.app, q.verdict, io.Discard)
		var se *cellapi.StatusError
		if !errors.As(err, &se) || se.Code != 400 || !strings.Contains(se.Message, q.want) {
			t.Errorf("tail app=%q verdict=%q: %v, want 400 mentioning %q", q.app, q.verdict, err, q.want)
		}
	}

	// flow-logs on/off still switches the engine (and stderr).
	if err := c.SetFlowLogs(context.Background(), true); err != nil || !a.engine.FlowLogEnabled() {
		t.Fatalf("flow-logs on: %v, engine log %v", err, a.engine.FlowLogEnabled())
	}
	if on, err := c.FlowLogs(context.Background()); err != nil || !on {
		t.Fatalf("flow-logs status: %v %v", on, err)
	}
	if err := c.SetFlowLogs(context.Background(), false); err != nil || a.engine.FlowLogEnabled() {
		t.Fatalf("flow-logs off: %v, engine log %v", err, a.engine.FlowLogEnabled())
	}
}

// TestDeniedPairsMetric: weft_packets_denied_by_pair_total has the top
// pairs and sums the rest as (other), so its series are bounded.
func TestDeniedPairsMetric(t *testing.T) {
	a, _, subnet := leasedAgent(t)
	dst := subnet.Addr().Next().Next()
	if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: dst, App: "db", Name: "db"}); err != nil {
		t.Fatal(err)
	}
	const apps = deniedPairsTop + 5
	ip := dst
	for i := range apps {
		ip = ip.Next()
		if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: ip, App: fmt.Sprint("app", i), Name: fmt.Sprint("c", i)}); err != nil {
			t.Fatal(err)
		}
		a.reconcileNow()
		for range i + 1 { // app i is denied i+1 times: the top are the last ones
			a.engine.Outbound(synTo(ip, dst, 40000, 5432))
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{a})
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var other, top float64
	n := 0
	for _, f := range fams {
		if f.GetName() != "weft_packets_denied_by_pair_total" {
			continue
		}
		for _, m := range f.Metric {
			n++
			l := map[string]string{}
			for _, lp := range m.Label {
				l[lp.GetName()] = lp.GetValue()
			}
			switch l["source_app"] {
			case pairOther:
				other = m.Counter.GetValue()
			case fmt.Sprint("app", apps-1):
				top = m.Counter.GetValue()
				if l["destination_app"] != "db" || l["reason"] != "no_policy" {
					t.Errorf("top pair labels %v", l)
				}
			}
		}
	}
	if n != deniedPairsTop+1 {
		t.Fatalf("%d series, want %d", n, deniedPairsTop+1)
	}
	if top != apps || other != 1+2+3+4+5 {
		t.Fatalf("top pair %v (want %d), other %v (want 15)", top, apps, other)
	}
}
