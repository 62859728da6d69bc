package cell

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine"
)

// leasedAgent is an agent with a real mesh that holds a subnet lease and an
// API server on a unix socket, but no data plane.
func leasedAgent(t *testing.T) (*Agent, *cellapi.Client, netip.Prefix) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(nil)
	mcfg := mesh.DefaultConfig()
	mcfg.Name = "c1"
	mcfg.BindAddr = netip.MustParseAddrPort("127.0.0.1:0")
	mcfg.ClusterKey = bytes.Repeat([]byte{7}, 32)
	mcfg.StateDir = t.TempDir()
	mcfg.WGPublicKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	mcfg.WGPort = 51820
	mcfg.LeaseSettle = 10 * time.Millisecond
	mcfg.Logger = slog.New(slog.DiscardHandler)
	mcfg.OperatorKey, mcfg.TrustedOperators = priv, []ed25519.PublicKey{pub}
	ready := make(chan struct{})
	close(ready)
	a := &Agent{cfg: Config{Name: "c1"}, log: mcfg.Logger, engine: engine.NewEngine(engine.DefaultConfig()), ready: ready}
	m, err := mesh.New(mcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown() })
	a.mesh = m
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	subnet, err := m.WaitSubnet(ctx)
	if err != nil {
		t.Fatalf("no lease: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := a.newServer()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return a, cellapi.NewClient(sock), subnet
}

func stepOf(res *cellapi.TraceResult, name string) cellapi.TraceStep {
	for _, s := range res.Steps {
		if s.Step == name {
			return s
		}
	}
	return cellapi.TraceStep{}
}

// TestTraceAPI: POST /v1/trace on a real server answers from the registry,
// the policy set and the compiled table: the rule that allows a flow, the
// closest rules of a denied one, an unregistered destination IP, and 4xx
// with the reason for bad input.
func TestTraceAPI(t *testing.T) {
	a, c, subnet := leasedAgent(t)
	ipA, ipB := subnet.Addr().Next().Next(), subnet.Addr().Next().Next().Next()
	for _, e := range []mesh.Endpoint{{IP: ipA, App: "appA", Name: "ca"}, {IP: ipB, App: "appB", Name: "cb"}} {
		if err := a.mesh.AddEndpoint(e); err != nil {
			t.Fatal(err)
		}
	}
	rule := tcpRule("appA", "appB", 8080, 8080)
	if _, err := a.mesh.AddPolicy(rule); err != nil {
		t.Fatal(err)
	}
	a.reconcileNow()
	ctx := context.Background()

	res, err := c.Trace(ctx, cellapi.TraceRequest{Source: "appA", Destination: "appB", Protocol: "tcp", Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != "allow" || !strings.Contains(res.Reason, rule.Key()) || stepOf(res, "policy").RuleID != rule.Key() {
		t.Fatalf("allowed flow: %+v", res)
	}
	if len(res.Sources) != 1 || res.Sources[0].IP != ipA.String() || len(res.Destinations) != 1 || res.Destinations[0].Cell != "c1" {
		t.Fatalf("allowed flow: sources %+v destinations %+v", res.Sources, res.Destinations)
	}
	if s := stepOf(res, "destination_cell"); !s.OK || !strings.Contains(s.Detail, "hair-pinned") {
		t.Fatalf("local destination: %+v", s)
	}

	// The same pair on another port: no rule, the 8080 rule is the closest.
	res, err = c.Trace(ctx, cellapi.TraceRequest{FromContainer: "ca", Destination: ipB.String(), Protocol: "tcp", Port: 9090})
	if err != nil {
		t.Fatal(err)
	}
	pol := stepOf(res, "policy")
	if res.Verdict != "no_policy" || len(pol.Closest) != 1 || pol.Closest[0] != cellapi.FromRule(rule) {
		t.Fatalf("other port: verdict %s, policy step %+v", res.Verdict, pol)
	}
	// Direction matters.
	if res, err = c.Trace(ctx, cellapi.TraceRequest{Source: "appB", Destination: "appA", Protocol: "tcp", Port: 8080}); err != nil || res.Verdict != "no_policy" {
		t.Fatalf("reverse direction: %+v %v", res, err)
	}

	// An address nobody registered.
	free := ipB.Next()
	res, err = c.Trace(ctx, cellapi.TraceRequest{Source: "appA", Destination: free.String(), Protocol: "udp", Port: 53})
	if err != nil {
		t.Fatal(err)
	}
	if d := stepOf(res, "destination"); res.Verdict != "unknown_destination" || !strings.Contains(d.Detail, "cell c1's subnet") {
		t.Fatalf("unregistered IP: %s %+v", res.Verdict, d)
	}
	// A source app with no container.
	if res, err = c.Trace(ctx, cellapi.TraceRequest{Source: "ghost", Destination: "appB", Protocol: "icmp"}); err != nil || res.Verdict != "unknown_source" {
		t.Fatalf("unregistered source app: %+v %v", res, err)
	}

	bad := []struct {
		req  cellapi.TraceRequest
		code int
		want string
	}{
		{cellapi.TraceRequest{Source: "appA", Destination: "appB", Protocol: "tcp"}, 400, "port is required"},
		{cellapi.TraceRequest{Source: "appA", Destination: "appB", Protocol: "icmp", Port: 1}, 400, "icmp has no ports"},
		{cellapi.TraceRequest{Source: "appA", Destination: "appB", Protocol: "gre", Port: 1}, 400, "gre"},
		{cellapi.TraceRequest{Source: "appA", Destination: "appB", Protocol: "all", Port: 1}, 400, "one packet"},
		{cellapi.TraceRequest{Source: "appA", Protocol: "tcp", Port: 1}, 400, "destination is required"},
		{cellapi.TraceRequest{Destination: "appB", Protocol: "tcp", Port: 1}, 400, "source is required"},
		{cellapi.TraceRequest{Source: "a b", Destination: "appB", Protocol: "tcp", Port: 1}, 400, "invalid source app"},
		{cellapi.TraceRequest{FromContainer: "nope", Destination: "appB", Protocol: "tcp", Port: 1}, 404, `no container "nope"`},
		{cellapi.TraceRequest{Source: "appB", FromContainer: "ca", Destination: "appB", Protocol: "tcp", Port: 1}, 400, "runs app appA"},
	}
	for _, b := range bad {
		_, err := c.Trace(ctx, b.req)
		var se *cellapi.StatusError
		if !errors.As(err, &se) || se.Code != b.code || !strings.Contains(se.Message, b.want) {
			t.Errorf("trace %+v: %v, want %d mentioning %q", b.req, err, b.code, b.want)
		}
	}
}

// TestTraceView: the steps that need other cells and the data plane, on a
// view built by hand.
func TestTraceView(t *testing.T) {
	ip := netip.MustParseAddr
	key2 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))
	now := time.Unix(1_800_000_000, 0)
	base := func() *traceView {
		return &traceView{
			self: "c1",
			endpoints: []mesh.Endpoint{
				{IP: ip("10.255.1.2"), App: "appA", Name: "ca", Cell: "c1"},
				{IP: ip("10.255.2.2"), App: "appB", Name: "cb", Cell: "c2"},
			},
			members: []mesh.Node{
				{Name: "c1", Subnet: netip.MustParsePrefix("10.255.1.0/24"), State: mesh.NodeAlive, Self: true},
				{Name: "c2", Addr: ip("198.18.0.12"), WGPublicKey: key2, Subnet: netip.MustParsePrefix("10.255.2.0/24"), State: mesh.NodeAlive},
			},
			rules:       []policy.Rule{tcpRule("appA", "appB", 8080, 8080)},
			enforcing:   true,
			overlayUp:   true,
			guard:       []overlay.GuardEntry{{Veth: attach.HostVethName("ca"), IP: ip("10.255.1.2")}},
			peers:       []cellapi.Peer{{PublicKey: key2, Endpoint: "198.18.0.12:51820", LastHandshake: now.Add(-7 * time.Second)}},
			overlayMTU:  1420,
			underlayMTU: 1500,
			vethMTU:     map[string]int{"ca": 1420},
			now:         now,
		}
	}
	req := cellapi.TraceRequest{Source: "appA", Destination: "appB", Protocol: "tcp", Port: 8080}
	trace := func(v *traceView) cellapi.TraceResult {
		t.Helper()
		res, err := traceFlow(req, v)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	res := trace(base())
	if res.Verdict != "allow" || res.PathMTU != 1420 {
		t.Fatalf("allowed: %+v", res)
	}
	if s := stepOf(&res, "destination_cell"); !s.OK || !strings.Contains(s.Detail, "last handshake 7s ago") {
		t.Fatalf("destination cell: %+v", s)
	}
	if s := stepOf(&res, "anti_spoofing"); !s.OK || !strings.Contains(s.Detail, "wc") {
		t.Fatalf("anti-spoofing: %+v", s)
	}

	cases := []struct {
		name, verdict, step, want string
		change                    func(v *traceView)
	}{
		{"no guard binding", "spoofed", "anti_spoofing", "not bound", func(v *traceView) { v.guard = nil }},
		{"cell dead", "cell_down", "destination_cell", "is dead", func(v *traceView) { v.members[1].State = mesh.NodeDead }},
		{"no peer", "no_peer", "destination_cell", "not a WireGuard peer", func(v *traceView) { v.peers = nil }},
		{"no rule", "no_policy", "policy", "no rule allows appA -> appB tcp port 8080", func(v *traceView) { v.rules = nil }},
		{"stale handshake", "allow", "destination_cell", "session has expired", func(v *traceView) { v.peers[0].LastHandshake = now.Add(-time.Hour) }},
		{"big veth", "allow", "mtu", "more than the overlay's 1420", func(v *traceView) { v.vethMTU["ca"] = 1500 }},
		{"overlay over underlay", "allow", "mtu", "exceeds it", func(v *traceView) { v.underlayMTU = 1400 }},
		{"enforcement off", "allow", "enforcement", "OFF", func(v *traceView) { v.enforcing = false }},
		{"path not probed", "allow", "mtu", "path to cell c2 not probed yet", func(v *traceView) {}},
		{"path probed", "allow", "mtu", "path MTU 1420 (", func(v *traceView) {
			v.pathMTU = map[string]PeerPathMTU{"c2": {MTU: 1420, State: pmtuOK, Probed: now.Add(-3 * time.Second)}}
		}},
		{"path reduced", "allow", "mtu", "path to cell c2 1240 (probed 3s ago)", func(v *traceView) {
			v.pathMTU = map[string]PeerPathMTU{"c2": {MTU: 1240, State: pmtuReduced, Probed: now.Add(-3 * time.Second)}}
		}},
		{"path no reply", "allow", "mtu", "no probe of 576 bytes was answered", func(v *traceView) {
			v.pathMTU = map[string]PeerPathMTU{"c2": {State: pmtuNoReply}}
		}},
	}
	for _, c := range cases {
		v := base()
		c.change(v)
		res := trace(v)
		if s := stepOf(&res, c.step); res.Verdict != c.verdict || !strings.Contains(s.Detail, c.want) {
			t.Errorf("%s: verdict %s, step %+v; want %s and %q", c.name, res.Verdict, s, c.verdict, c.want)
		}
	}
	// A reduced path is the trace's path MTU, with a warning.
	v := base()
	v.pathMTU = map[string]PeerPathMTU{"c2": {MTU: 1240, State: pmtuReduced, Probed: now}}
	if res := trace(v); res.PathMTU != 1240 || stepOf(&res, "mtu").OK {
		t.Errorf("reduced path: path MTU %d, step %+v; want 1240 and a warning", res.PathMTU, stepOf(&res, "mtu"))
	}
}
