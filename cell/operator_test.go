package cell

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine"
)

// TestInitOperators: the first cell makes and trusts an operator key;
// a cell initialised with --cluster-key trusts the same keys and holds
// none; --operator-pub trusts the given keys instead.
func TestInitOperators(t *testing.T) {
	d1, d2, d3 := t.TempDir(), t.TempDir(), t.TempDir()
	if _, err := Init(d1, ""); err != nil {
		t.Fatal(err)
	}
	r1, err := InitOperators(d1, "", "")
	if err != nil || !r1.KeyNew || len(r1.Trusted) != 1 {
		t.Fatalf("first cell: %+v %v", r1, err)
	}
	for f, mode := range map[string]os.FileMode{OperatorKeyFile: 0o600, OperatorsPubFile: 0o644} {
		fi, err := os.Stat(filepath.Join(d1, f))
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: %v mode %v, want %v", f, err, fi.Mode().Perm(), mode)
		}
	}
	// Again: everything kept.
	if r, err := InitOperators(d1, "", ""); err != nil || r.KeyNew || !slices.Equal(r.Trusted, r1.Trusted) {
		t.Fatalf("second init: %+v %v", r, err)
	}

	r2, err := InitOperators(d2, filepath.Join(d1, ClusterKeyFile), "")
	if err != nil || r2.HasKey || !slices.Equal(r2.Trusted, r1.Trusted) {
		t.Fatalf("joining cell: %+v %v", r2, err)
	}
	priv, trusted, err := LoadOperators(d2)
	if err != nil || priv != nil || len(trusted) != 1 {
		t.Fatalf("LoadOperators(joining cell) = %v, %d keys, %v", priv, len(trusted), err)
	}

	r3, err := InitOperators(d3, "", filepath.Join(d1, OperatorsPubFile))
	if err != nil || r3.HasKey || !slices.Equal(r3.Trusted, r1.Trusted) {
		t.Fatalf("--operator-pub: %+v %v", r3, err)
	}
	// A change signed with the key verifies under the API types.
	key, _, err := LoadOperators(d1)
	if err != nil {
		t.Fatal(err)
	}
	r := policy.Rule{Source: "a", Destination: "b", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 1, End: 1}}
	ch := SignPolicyChange(r, true, "cli@test", 0, key)
	if len(ch.Sig) == 0 || ch.Stamp == 0 {
		t.Fatalf("unsigned change %+v", ch)
	}
	if ch2 := SignPolicyChange(r, true, "cli@test", 1<<62, key); ch2.Stamp != 1<<62+1 {
		t.Fatalf("stamp above minStamp: %d", ch2.Stamp)
	}
}

// testAgent is an agent with a real mesh (a cluster of one, holding
// operator key priv, trusting trusted) and its API on a unix socket; no
// data plane.
func testAgent(t *testing.T, priv ed25519.PrivateKey, trusted ed25519.PublicKey) (*Agent, *cellapi.Client) {
	t.Helper()
	mcfg := mesh.DefaultConfig()
	mcfg.Name = "c1"
	mcfg.BindAddr = netip.MustParseAddrPort("127.0.0.1:0")
	mcfg.ClusterKey = bytes.Repeat([]byte{7}, 32)
	mcfg.StateDir = t.TempDir()
	mcfg.WGPublicKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	mcfg.WGPort = 51820
	mcfg.Logger = slog.New(slog.DiscardHandler)
	mcfg.OperatorKey, mcfg.TrustedOperators = priv, []ed25519.PublicKey{trusted}
	mcfg.Version = testVersion
	a := &Agent{cfg: Config{Name: "c1", Version: testVersion, OverlayCIDR: mcfg.OverlayCIDR}, log: mcfg.Logger, engine: engine.NewEngine(engine.DefaultConfig()), ready: make(chan struct{})}
	m, err := mesh.New(mcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown() })
	a.mesh = m
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := a.newServer()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return a, cellapi.NewClient(sock)
}

func tcpRule(src, dst string, lo, hi uint16) policy.Rule {
	return policy.Rule{Source: src, Destination: dst, Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: lo, End: hi}}
}

// TestPolicyChangesBatch: POST /v1/policy-changes takes unsigned changes
// (weft policy push without an operator key) and signs them with the
// cell's key, applied with the signed ones as one batch; a batch that
// removes more than half of the set is refused whole unless allowed
// (issue 22, items 5 and 9).
func TestPolicyChangesBatch(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	a, c := testAgent(t, priv, pub)
	ctx := context.Background()
	r8082, r8081, dns, web := tcpRule("appA", "appB", 8082, 8082), tcpRule("appA", "appB", 8081, 8090),
		tcpRule("appA", "dns", 53, 53), tcpRule("appC", "web", 80, 80)
	unsigned := func(r policy.Rule, present bool) cellapi.SignedPolicyChange {
		return cellapi.SignedPolicyChange{Rule: cellapi.FromRule(r), Present: present}
	}
	apply := func(req cellapi.PolicyChangesRequest) ([]cellapi.PolicyChangeResult, error) {
		return c.PolicyChanges(ctx, req)
	}
	res, err := apply(cellapi.PolicyChangesRequest{Changes: []cellapi.SignedPolicyChange{unsigned(r8082, true), unsigned(dns, true), unsigned(web, true)}})
	if err != nil || len(res) != 3 || res[0].Code != http.StatusCreated || res[2].Code != http.StatusCreated {
		t.Fatalf("unsigned batch: %+v %v; want 3 x 201", res, err)
	}

	// The replacement: one removal and one addition, one signed by the
	// client, one by the agent.
	signed := SignPolicyChange(r8081, true, "cli@test", 0, priv)
	res, err = apply(cellapi.PolicyChangesRequest{Push: true, Changes: []cellapi.SignedPolicyChange{unsigned(r8082, false), signed}})
	if err != nil || res[0].Code != http.StatusNoContent || res[1].Code != http.StatusCreated {
		t.Fatalf("replacement: %+v %v; want 204, 201", res, err)
	}
	if got, want := a.mesh.Policies(), []policy.Rule{r8081, dns, web}; !slices.Equal(got, want) {
		t.Fatalf("policies %v, want %v", got, want)
	}

	// Removing 2 of 3 is refused whole; 1 of 3 is not; allowed, 2 of 3 is.
	removeTwo := cellapi.PolicyChangesRequest{Push: true, Changes: []cellapi.SignedPolicyChange{unsigned(dns, false), unsigned(web, false), unsigned(r8082, true)}}
	_, err = apply(removeTwo)
	var se *cellapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusPreconditionFailed ||
		!strings.Contains(se.Message, "removes 2 of the 3 policies") || !strings.Contains(se.Message, "--allow-large-removal") {
		t.Fatalf("removing 2 of 3: %v; want 412 naming --allow-large-removal", err)
	}
	if got := a.mesh.Policies(); len(got) != 3 {
		t.Fatalf("a refused batch changed the set: %v", got)
	}
	removeTwo.AllowLargeRemoval = true
	if res, err := apply(removeTwo); err != nil || res[0].Code != http.StatusNoContent || res[1].Code != http.StatusNoContent {
		t.Fatalf("removing 2 of 3, allowed: %+v %v", res, err)
	}
	// One change that is not a push (remove-network-policy) is not checked,
	// even for the last rules; a push of one is (1 of 2 is not more than half).
	if res, err := apply(cellapi.PolicyChangesRequest{Push: true, Changes: []cellapi.SignedPolicyChange{unsigned(r8082, false)}}); err != nil || res[0].Code != http.StatusNoContent {
		t.Fatalf("push removing 1 of 2: %+v %v", res, err)
	}
	if _, err := apply(cellapi.PolicyChangesRequest{Push: true, Changes: []cellapi.SignedPolicyChange{unsigned(r8081, false)}}); !errors.As(err, &se) || se.Code != http.StatusPreconditionFailed {
		t.Fatalf("push removing 1 of 1: %v; want 412", err)
	}
	if res, err := apply(cellapi.PolicyChangesRequest{Changes: []cellapi.SignedPolicyChange{unsigned(r8081, false)}}); err != nil || res[0].Code != http.StatusNoContent {
		t.Fatalf("single removal of the last rule: %+v %v", res, err)
	}
}

// TestPolicyChangesUnsignedWithoutKey: a cell without an operator key
// answers 403 for unsigned changes and still applies the signed ones.
func TestPolicyChangesUnsignedWithoutKey(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	a, c := testAgent(t, nil, pub)
	r1, r2 := tcpRule("a", "b", 1, 1), tcpRule("a", "b", 2, 2)
	res, err := c.ApplyPolicyChanges(context.Background(), []cellapi.SignedPolicyChange{
		{Rule: cellapi.FromRule(r1), Present: true}, SignPolicyChange(r2, true, "cli@test", 0, priv)})
	if err != nil || res[0].Code != http.StatusForbidden || !strings.Contains(res[0].Error, "cannot sign") || res[1].Code != http.StatusCreated {
		t.Fatalf("results %+v %v; want 403 (cannot sign), 201", res, err)
	}
	if got := a.mesh.Policies(); !slices.Equal(got, []policy.Rule{r2}) {
		t.Fatalf("policies %v", got)
	}
}

// TestOperatorsPubRequired: an operators.pub that is missing, empty or
// damaged stops the agent before it touches state.json; one that trusts
// no key on purpose (as weft init writes it when given none) does not.
func TestOperatorsPubRequired(t *testing.T) {
	d := t.TempDir()
	if _, err := Init(d, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := InitOperators(d, "", ""); err != nil {
		t.Fatal(err)
	}
	pubPath := filepath.Join(d, OperatorsPubFile)
	good, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	flip := slices.Clone(good)
	flip[3] = '*' // not base64
	for _, c := range []struct {
		name string
		pub  []byte // nil: no file
		want string
	}{
		{"missing", nil, "operators.pub is missing"},
		{"empty", []byte{}, "lists no operator key"},
		{"blank lines", []byte("\n\n"), "lists no operator key"},
		{"only a comment", []byte("# keys\n"), "lists no operator key"},
		{"a byte changed", flip, "operators.pub:1: not a base64 ed25519 public key"},
		{"truncated", good[:len(good)-3], "operators.pub:1: not a base64 ed25519 public key"},
	} {
		os.Remove(pubPath)
		if c.pub != nil {
			if err := os.WriteFile(pubPath, c.pub, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		_, _, err := LoadOperators(d)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "weft init") {
			t.Errorf("%s: LoadOperators: %v, want an error saying %q and how to fix it", c.name, err, c.want)
		}
	}

	// The agent refuses to start, and state.json stays as it was.
	os.Remove(pubPath)
	state := []byte(`{"version":1,"node":"c1","policies":[]}`)
	if err := os.WriteFile(filepath.Join(d, "state.json"), state, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Name, cfg.StateDir, cfg.Socket = "c1", d, filepath.Join(d, "api.sock")
	cfg.Bind = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Logger = slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // an agent that starts stops at once, before its data plane
	if err := Run(ctx, cfg); err == nil || !strings.Contains(err.Error(), "operators.pub is missing") {
		t.Errorf("agent without operators.pub: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(d, "state.json")); !bytes.Equal(b, state) {
		t.Errorf("state.json changed: %s", b)
	}

	// weft init given no key to trust says so in operators.pub; that
	// cell starts (and refuses every policy change).
	d2 := t.TempDir()
	if _, err := Init(d2, filepath.Join(d, ClusterKeyFile)); err != nil {
		t.Fatal(err)
	}
	lone := filepath.Join(t.TempDir(), ClusterKeyFile) // no operators.pub next to it
	if err := os.WriteFile(lone, mustRead(t, filepath.Join(d, ClusterKeyFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if r, err := InitOperators(d2, lone, ""); err != nil || len(r.Trusted) != 0 || r.HasKey {
		t.Fatalf("init trusting nothing: %+v %v", r, err)
	}
	if _, trusted, err := LoadOperators(d2); err != nil || len(trusted) != 0 {
		t.Fatalf("LoadOperators(no keys on purpose) = %d keys, %v", len(trusted), err)
	}
	// Trusting a key later replaces the line.
	if err := os.WriteFile(pubPath, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if r, err := InitOperators(d2, "", filepath.Join(d, OperatorsPubFile)); err != nil || len(r.Trusted) != 1 {
		t.Fatalf("trusting a key later: %+v %v", r, err)
	}
	if b := mustRead(t, filepath.Join(d2, OperatorsPubFile)); strings.Contains(string(b), NoOperatorsLine) {
		t.Errorf("operators.pub still says %q: %s", NoOperatorsLine, b)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
