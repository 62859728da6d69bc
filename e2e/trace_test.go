package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/internal/lab"
)

// traceJSON runs `weft trace ARGS --output json` on cell i.
func traceJSON(t *testing.T, l *lab.Lab, i int, args ...string) cellapi.TraceResult {
	t.Helper()
	out := weft(t, l, i, append([]string{"trace", "--output", "json"}, args...)...)
	var res cellapi.TraceResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("weft trace %v: %v\n%s", args, err, out)
	}
	return res
}

func traceStep(res cellapi.TraceResult, name string) cellapi.TraceStep {
	for _, s := range res.Steps {
		if s.Step == name {
			return s
		}
	}
	return cellapi.TraceStep{}
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
	var res cellapi.TraceResult
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

// tailFlowLogs starts `weft flow-logs tail ARGS` on cell i and returns its
// lines as they come; the process ends with the test.
func tailFlowLogs(t *testing.T, l *lab.Lab, i int, args ...string) <-chan map[string]string {
	t.Helper()
	c, err := l.Cell(i)
	if err != nil {
		t.Fatal(err)
	}
	cmd := lab.ExecIn(c.Netns, weftBin, append([]string{"--socket", c.Socket, "flow-logs", "tail"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan map[string]string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var m map[string]string
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
	}()
	return lines
}

// nextFlow returns the next line from lines that has all of want, failing
// after 10 s.
func nextFlow(t *testing.T, lines <-chan map[string]string, want map[string]string) map[string]string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("flow-log tail ended before a line with %v", want)
			}
			match := true
			for k, v := range want {
				match = match && m[k] == v
			}
			if match {
				return m
			}
		case <-timeout:
			t.Fatalf("no flow-log line with %v within 10s", want)
		}
	}
}

// TestFlowLogTail: `weft flow-logs tail` follows the flow log through the
// API: the destination cell explains a refused connection (no_policy,
// inbound) where the source cell only saw it leave (accept, outbound, no
// rule), and names the rule of an allowed one.
func TestFlowLogTail(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	a, b := l.Name("appA"), l.Name("appB")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, b, 8080)
	onB := tailFlowLogs(t, l, 2, "--app", "appA")
	onA := tailFlowLogs(t, l, 1, "--verdict", "allowed")
	// The tails switch the engines' logs on when they connect; retry the
	// refused connection until both have seen one.
	deadline := time.Now().Add(10 * time.Second)
	var denied, out map[string]string
	for denied == nil || out == nil {
		if time.Now().After(deadline) {
			t.Fatalf("within 10s: no_policy line on cell 2 %v, outbound accept on cell 1 %v", denied, out)
		}
		expectRefused(t, a, ipB, 8080)
		wait := time.After(200 * time.Millisecond)
	drain:
		for {
			select {
			case m := <-onB:
				if m["verdict"] == "no_policy" {
					denied = m
				}
			case m := <-onA:
				if m["verdict"] == "accept" && m["destination"] == ipB.String()+":8080" {
					out = m
				}
			case <-wait:
				break drain
			}
		}
	}
	t.Logf("cell 2: %v", denied)
	if denied["direction"] != "inbound" || denied["source_app"] != "appA" || denied["destination_app"] != "appB" {
		t.Errorf("denied line on cell 2: %v", denied)
	}
	t.Logf("cell 1: %v", out)
	if out["direction"] != "outbound" || out["rule"] != "" {
		t.Errorf("source cell's line for the refused flow: %v, want an outbound accept without a rule", out)
	}

	weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	expectHTTP(t, a, ipB, 8080)
	acc := nextFlow(t, onB, map[string]string{"verdict": "accept"})
	t.Logf("cell 2: %v", acc)
	if acc["direction"] != "inbound" || acc["rule"] != "appA>appB/tcp/8080-8080" {
		t.Errorf("allowed line on cell 2: %v, want inbound with rule appA>appB/tcp/8080-8080", acc)
	}
}

// TestTraceLive: `weft trace --live` sends one probe from appA's container
// on cell 1 to appB's on cell 2: without a rule, cell 2's engine drops it
// (no_policy, asked through the tunnel); with one it is delivered (nothing
// listens, so appB's kernel refuses the connection); from a spoofed
// source the guard of cell 1 drops it, counted under appA in
// weft_guard_drops_by_app_total. A cell without a container of the source
// app says so.
func TestTraceLive(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin,
		AgentArgs: []string{"--metrics-addr", fmt.Sprintf(":%d", metricsPort)}})
	a, b := l.Name("appA"), l.Name("appB")
	ipA, err := l.CreateContainer(1, "appA", a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateContainer(2, "appB", b); err != nil {
		t.Fatal(err)
	}
	args := []string{"--live", "appA", "appB", "--protocol", "tcp", "--port", "8080"}

	// appB's registration and cell 2's peer reach cell 1 asynchronously.
	var res cellapi.TraceResult
	try := func() cellapi.TraceResult {
		out, err := l.Weft(1, append([]string{"trace", "--output", "json"}, args...)...)
		var r cellapi.TraceResult
		if err == nil {
			json.Unmarshal([]byte(out), &r)
		}
		return r
	}
	waitFor(t, 20*time.Second, "live trace appA -> appB dropped at cell 2", func() bool {
		res = try()
		return res.Verdict == "no_policy"
	})
	t.Logf("$ weft trace --live appA appB --port 8080\n%s", weft(t, l, 1, append([]string{"trace"}, args...)...))
	if s := traceStep(res, "destination_cell"); res.DroppedAt != "destination_cell" || !strings.Contains(s.Detail, "cell c2") {
		t.Errorf("no policy: dropped at %q, destination step %+v", res.DroppedAt, s)
	}
	if s := traceStep(res, "source_cell"); !s.OK {
		t.Errorf("no policy: source cell step %+v, want passed to WireGuard", s)
	}

	weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	waitFor(t, 20*time.Second, "live trace appA -> appB delivered", func() bool {
		res = try()
		return res.Verdict == "delivered"
	})
	t.Logf("$ weft trace --live appA appB --port 8080\n%s", weft(t, l, 1, append([]string{"trace"}, args...)...))
	if s := traceStep(res, "destination_cell"); !s.OK || !strings.Contains(s.Detail, "appA>appB/tcp/8080-8080") {
		t.Errorf("allowed: destination step %+v, want the rule", s)
	}
	if s := traceStep(res, "delivery"); !s.OK || !strings.Contains(s.Detail, "refused") {
		t.Errorf("allowed: delivery step %+v, want refused by appB (nothing listens)", s)
	}

	// UDP and ICMP probes: no rule for them, then an icmp rule.
	if res := traceJSON(t, l, 1, "--live", "appA", "appB", "--protocol", "udp", "--port", "8080"); res.Verdict != "no_policy" {
		t.Errorf("udp without a rule: verdict %s, steps %+v", res.Verdict, res.Steps)
	}
	if res := traceJSON(t, l, 1, "--live", "appA", "appB", "--protocol", "icmp"); res.Verdict != "no_policy" {
		t.Errorf("icmp without a rule: verdict %s, steps %+v", res.Verdict, res.Steps)
	}
	weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "icmp")
	waitFor(t, 10*time.Second, "live icmp appA -> appB answered", func() bool {
		res := traceJSON(t, l, 1, "--live", "appA", "appB", "--protocol", "icmp")
		return res.Verdict == "delivered" && strings.Contains(traceStep(res, "delivery").Detail, "echo reply")
	})

	// A spoofed source: the guard of cell 1 drops it before the engine.
	spoofed := ipA.Next()
	res = traceJSON(t, l, 1, append(args, "--source-ip", spoofed.String())...)
	t.Logf("$ weft trace --live appA appB --port 8080 --source-ip %v\n%s", spoofed,
		weft(t, l, 1, append([]string{"trace", "--source-ip", spoofed.String()}, args...)...))
	if res.Verdict != "spoofed" || res.DroppedAt != "source_guard" {
		t.Errorf("spoofed source: verdict %s at %q, want spoofed at source_guard; steps %+v", res.Verdict, res.DroppedAt, res.Steps)
	}
	samples, _ := scrape(t, l, 2, 1)
	if n := samples[`weft_guard_drops_by_app_total{app="appA",reason="spoofed"}`]; n < 1 {
		t.Errorf("weft_guard_drops_by_app_total{app=appA,reason=spoofed} = %v after a spoofed probe, want >= 1", n)
	}

	// No container of appA on cell 2.
	out, err := l.Weft(2, append([]string{"trace"}, args...)...)
	if err == nil || !strings.Contains(out, "has no container on cell c2") {
		t.Errorf("live trace from a cell without the source: err %v, output %q", err, out)
	}
}

// TestOrgSpaceLive: cf's -s SPACE -o ORG name the destination app of that
// org and space; the rule lets appA reach acme/prod/db's container and not
// acme/dev/db's (same app name, another space), live probes show it,
// network-policies lists the space and org in cf's columns, and shell
// completion offers the apps the agent knows.
func TestOrgSpaceLive(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	if _, err := l.CreateContainer(1, "appA", l.Name("appA")); err != nil {
		t.Fatal(err)
	}
	prod, err := l.CreateContainer(2, "acme/prod/db", l.Name("prod-db"))
	if err != nil {
		t.Fatal(err)
	}
	dev, err := l.CreateContainer(2, "acme/dev/db", l.Name("dev-db"))
	if err != nil {
		t.Fatal(err)
	}
	weft(t, l, 1, "add-network-policy", "appA", "db", "-s", "prod", "-o", "acme", "--protocol", "tcp", "--port", "5432")
	if out := weft(t, l, 1, "network-policies"); !strings.Contains(strings.Join(strings.Fields(out), " "), "appA db tcp 5432 prod acme") {
		t.Errorf("network-policies:\n%s", out)
	}
	// Shell completion asks cell 1's agent for the app names it knows
	// (`weft __complete` is what the completion scripts run).
	waitFor(t, 10*time.Second, "completion of the apps of both cells", func() bool {
		out, _ := l.Weft(1, "__complete", "add-network-policy", "appA", "-s", "prod", "-o", "acme", "")
		return strings.HasPrefix(out, "db\n:4\n")
	})
	if out := weft(t, l, 1, "__complete", "add-network-policy", "a"); !strings.HasPrefix(out, "acme/dev/db\nacme/prod/db\nappA\n:4\n") {
		t.Errorf("weft __complete add-network-policy a:\n%s", out)
	}
	live := func(dst string) cellapi.TraceResult {
		out, err := l.Weft(1, "trace", "--live", "--output", "json", "appA", dst, "--protocol", "tcp", "--port", "5432")
		var r cellapi.TraceResult
		if err == nil {
			json.Unmarshal([]byte(out), &r)
		}
		return r
	}
	waitFor(t, 20*time.Second, "appA -> acme/prod/db delivered", func() bool { return live(prod.String()).Verdict == "delivered" })
	waitFor(t, 20*time.Second, "appA -> acme/dev/db dropped for no_policy", func() bool { return live(dev.String()).Verdict == "no_policy" })
	t.Logf("$ weft trace --live appA %v --port 5432 (acme/dev/db)\n%s", dev,
		weft(t, l, 1, "trace", "--live", "appA", dev.String(), "--protocol", "tcp", "--port", "5432"))
}
