package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/internal/lab"
)

// traceJSON runs `weft trace ARGS --output json` on cell i.
func traceJSON(t *testing.T, l *lab.Lab, i int, args ...string) cell.TraceResult {
	t.Helper()
	out := weft(t, l, i, append([]string{"trace", "--output", "json"}, args...)...)
	var res cell.TraceResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("weft trace %v: %v\n%s", args, err, out)
	}
	return res
}

func traceStep(res cell.TraceResult, name string) cell.TraceStep {
	for _, s := range res.Steps {
		if s.Step == name {
			return s
		}
	}
	return cell.TraceStep{}
}

// TestTrace: `weft trace` on a two-cell lab explains an allowed flow (the
// rule, the destination cell's WireGuard peer, the path MTU), a flow no
// rule allows (with the closest rule), and a destination IP nobody
// registered, without sending traffic.
func TestTrace(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	a, b := l.Name("appA"), l.Name("appB")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")

	// appB's registration and cell 2's peer reach cell 1 asynchronously.
	var res cell.TraceResult
	waitFor(t, 10*time.Second, "trace appA -> appB allowed on cell 1", func() bool {
		res = traceJSON(t, l, 1, "appA", "appB", "--protocol", "tcp", "--port", "8080")
		return res.Verdict == "allow"
	})
	t.Logf("$ weft trace appA appB --protocol tcp --port 8080\n%s", weft(t, l, 1, "trace", "appA", "appB", "--protocol", "tcp", "--port", "8080"))
	if s := traceStep(res, "policy"); s.RuleID != "appA>appB/tcp/8080-8080" {
		t.Errorf("policy step %+v, want rule appA>appB/tcp/8080-8080", s)
	}
	if s := traceStep(res, "anti_spoofing"); !s.OK || !strings.Contains(s.Detail, "bound to its veth") {
		t.Errorf("anti-spoofing step %+v, want the guard binding of cell 1", s)
	}
	if s := traceStep(res, "destination_cell"); !s.OK || !strings.Contains(s.Detail, "cell c2") || !strings.Contains(s.Detail, "WireGuard peer") {
		t.Errorf("destination cell step %+v", s)
	}
	if res.PathMTU < 1280 || res.PathMTU > 1500 {
		t.Errorf("path MTU %d", res.PathMTU)
	}

	// Another port: no rule; the closest is the 8080 one. From cell 2,
	// where the packet would be judged, and by container and IP.
	res = traceJSON(t, l, 2, "--from-container", a, ipB.String(), "--protocol", "tcp", "--port", "9090")
	t.Logf("$ weft trace --from-container %s %v --port 9090 (cell 2)\n%s", a, ipB,
		weft(t, l, 2, "trace", "--from-container", a, ipB.String(), "--port", "9090"))
	if s := traceStep(res, "policy"); res.Verdict != "no_policy" || len(s.Closest) != 1 || s.Closest[0].Ports.Start != 8080 {
		t.Errorf("port 9090: verdict %s, policy step %+v; want no_policy with the 8080 rule closest", res.Verdict, s)
	}

	// A destination address no container has.
	free := ipB.Next()
	res = traceJSON(t, l, 1, "appA", free.String(), "--protocol", "udp", "--port", "53")
	t.Logf("$ weft trace appA %v --protocol udp --port 53\n%s", free, weft(t, l, 1, "trace", "appA", free.String(), "--protocol", "udp", "--port", "53"))
	if s := traceStep(res, "destination"); res.Verdict != "unknown_destination" || !strings.Contains(s.Detail, "cell c2's subnet") {
		t.Errorf("unregistered destination: verdict %s, step %+v", res.Verdict, s)
	}

	// Bad input is refused with the reason.
	if out, err := l.Weft(1, "trace", "appA", "appB", "--protocol", "icmp", "--port", "8080"); err == nil || !strings.Contains(out, "icmp has no ports") {
		t.Errorf("icmp with a port: err %v, output %q", err, out)
	}
}
