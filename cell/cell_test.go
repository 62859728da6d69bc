package cell

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine"
)

func TestFreeIP(t *testing.T) {
	subnet := netip.MustParsePrefix("10.255.7.0/30") // .0 net, .1 cell, .2 first container, .3 broadcast
	ip, ok := freeIP(subnet, nil, nil)
	if !ok || ip != netip.MustParseAddr("10.255.7.2") {
		t.Fatalf("first free = %v %v, want 10.255.7.2", ip, ok)
	}
	if ip, ok := freeIP(subnet, []mesh.Endpoint{{IP: ip}}, nil); ok {
		t.Fatalf("full /30 gave %v", ip)
	}
	if ip, ok := freeIP(subnet, nil, []netip.Addr{ip}); ok {
		t.Fatalf("full /30 gave %v", ip)
	}
	subnet = netip.MustParsePrefix("10.255.1.0/24")
	used := []mesh.Endpoint{{IP: netip.MustParseAddr("10.255.1.2")}, {IP: netip.MustParseAddr("10.255.1.4")}}
	if ip, _ := freeIP(subnet, used, nil); ip != netip.MustParseAddr("10.255.1.3") {
		t.Fatalf("gap not reused: %v", ip)
	}
	// An address still routed to a veth is not handed out, registered or not.
	routed := []netip.Addr{netip.MustParseAddr("10.255.1.3"), netip.MustParseAddr("10.255.1.5")}
	if ip, _ := freeIP(subnet, used, routed); ip != netip.MustParseAddr("10.255.1.6") {
		t.Fatalf("routed addresses reused: %v", ip)
	}
}

func TestInitAndLoadKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if _, err := LoadKeys(dir); err == nil || !strings.Contains(err.Error(), "weft init --state-dir "+dir) {
		t.Fatalf("LoadKeys of an empty dir: %v", err)
	}
	res, err := Init(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if !res.ClusterKeyNew || !res.WireGuardKeyNew {
		t.Fatalf("first Init kept keys: %+v", res)
	}
	k, err := LoadKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Cluster) != 32 || k.WireGuard.PublicKey() != res.PublicKey {
		t.Fatalf("loaded keys do not match: %d bytes, %v vs %v", len(k.Cluster), k.WireGuard.PublicKey(), res.PublicKey)
	}
	again, err := Init(dir, "")
	if err != nil || again.ClusterKeyNew || again.WireGuardKeyNew || again.PublicKey != res.PublicKey {
		t.Fatalf("second Init changed keys: %+v %v", again, err)
	}
	bad := filepath.Join(t.TempDir(), "bad.key")
	os.WriteFile(bad, []byte("short"), 0o600)
	if _, err := Init(filepath.Join(t.TempDir(), "x"), bad); err == nil || !strings.Contains(err.Error(), "32 bytes") {
		t.Fatalf("Init with a bad cluster key file: %v", err)
	}
}

// TestAPIBadRequests: malformed requests get a 4xx with a reason, before
// anything in the cell is touched (the agent here has no mesh at all).
func TestAPIBadRequests(t *testing.T) {
	a := &Agent{cfg: Config{Name: "c1"}}
	srv := httptest.NewServer(a.newServer().Handler)
	defer srv.Close()
	cases := []struct {
		method, path, body string
		want               string
	}{
		{"POST", "/v1/policies", `{"source":"a"`, "bad request body"},
		{"POST", "/v1/policies", `{"source":"a","destination":"b","protocol":"tcp","ports":{"start":1,"end":1},"extra":1}`, "unknown field"},
		{"POST", "/v1/policies", `{"source":"a","destination":"b","protocol":"gre","ports":{"start":1,"end":1}}`, "gre"},
		{"DELETE", "/v1/policies", `{"source":"a","destination":"b","protocol":"tcp","ports":{"start":5,"end":4}}`, "5"},
		{"POST", "/v1/containers", `{"app":"a b","name":"x"}`, "invalid app name"},
		{"POST", "/v1/containers", `{"app":"a","name":"../etc"}`, "invalid container name"},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e cellapi.ErrorBody
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Error, c.want) {
			t.Errorf("%s %s %s: %d %q, want 400 mentioning %q", c.method, c.path, c.body, resp.StatusCode, e.Error, c.want)
		}
	}
}

// TestClientErrors: the client turns an absent agent and an error answer
// into messages that say what happened.
func TestClientErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	_, err := cellapi.NewClient(sock).Status(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no weft agent at "+sock) {
		t.Fatalf("absent agent: %v", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "Policy does not exist.")
	})}
	go srv.Serve(ln)
	defer srv.Close()
	err = cellapi.NewClient(sock).RemovePolicy(context.Background(), cellapi.PolicyRule{})
	se, ok := err.(*cellapi.StatusError)
	if !ok || se.Code != 404 || se.Message != "Policy does not exist." {
		t.Fatalf("error answer: %#v", err)
	}
	if _, err := listenSocket(sock); err == nil || !strings.Contains(err.Error(), "already served by another agent") {
		t.Fatalf("listen on a served socket: %v", err)
	}
}

func TestUsableUpstreams(t *testing.T) {
	a := &Agent{cfg: Config{OverlayCIDR: netip.MustParsePrefix("10.255.0.0/16")}, log: slog.New(slog.DiscardHandler)}
	got := a.usableUpstreams([]string{"10.255.255.53:53", "192.0.2.53:53"})
	if len(got) != 1 || got[0] != "192.0.2.53:53" {
		t.Fatalf("usable upstreams: %v, want only 192.0.2.53:53", got)
	}
}

// TestTableInputsEqual: the periodic pass recompiles the policy table only
// when a rule, an endpoint (its app or locality) or the subnet changed.
func TestTableInputsEqual(t *testing.T) {
	mk := func() *tableInputs {
		return &tableInputs{
			rules: []policy.Rule{{Source: "a", Destination: "b", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 8080, End: 8080}}},
			eps: []engine.Endpoint{
				{IP: netip.MustParseAddr("10.255.1.2"), App: "a", Local: true},
				{IP: netip.MustParseAddr("10.255.2.2"), App: "b"},
			},
			subnet: netip.MustParsePrefix("10.255.1.0/24"),
		}
	}
	if mk().equal(nil) {
		t.Error("equal to no table: a first table would never be compiled")
	}
	if !mk().equal(mk()) {
		t.Error("the same inputs differ: the periodic pass would recompile every time")
	}
	changes := map[string]func(x *tableInputs){
		"rule port":      func(x *tableInputs) { x.rules[0].Ports.End = 8081 },
		"rule removed":   func(x *tableInputs) { x.rules = nil },
		"endpoint app":   func(x *tableInputs) { x.eps[1].App = "c" },
		"endpoint local": func(x *tableInputs) { x.eps[1].Local = true },
		"endpoint gone":  func(x *tableInputs) { x.eps = x.eps[:1] },
		"subnet":         func(x *tableInputs) { x.subnet = netip.MustParsePrefix("10.255.3.0/24") },
	}
	for name, change := range changes {
		x := mk()
		change(x)
		if x.equal(mk()) || mk().equal(x) {
			t.Errorf("%s: inputs still equal", name)
		}
	}
}

// Run refuses an IPv6 overlay before it reads keys, binds or leases.
func TestRunRefusesIPv6Overlay(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Name, cfg.StateDir, cfg.Bind = "c1", t.TempDir(), netip.MustParseAddrPort("127.0.0.1:7946")
	cfg.Socket = filepath.Join(t.TempDir(), "weft.sock")
	cfg.OverlayCIDR = netip.MustParsePrefix("fd00:10::/16")
	err := Run(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "IPv6 overlays are not supported yet") {
		t.Fatalf("Run with an IPv6 overlay: %v", err)
	}
	if _, err := os.Stat(cfg.Socket); err == nil {
		t.Error("the API socket was made before the overlay was checked")
	}
}
