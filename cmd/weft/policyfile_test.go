package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/policy"
)

// fakeAgent serves the policy part of the local API from a set in memory
// and records every request that changes it and the set after it.
type fakeAgent struct {
	mu      sync.Mutex
	set     map[cellapi.PolicyRule]bool
	egress  map[policy.EgressRule]bool
	ingress map[policy.IngressRule]bool
	reqs    []string                       // "METHOD PATH" of each change request
	pushes  []cellapi.PolicyChangesRequest // bodies of POST /v1/policy-changes
	states  [][]cellapi.PolicyRule         // the set after each change request
}

func (f *fakeAgent) list() []cellapi.PolicyRule {
	var out []cellapi.PolicyRule
	for r := range f.set {
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y cellapi.PolicyRule) int {
		a, _ := x.Rule()
		b, _ := y.Rule()
		return strings.Compare(a.Key(), b.Key())
	})
	return out
}

// fakeOverlay is the overlay of the fake agent.
var fakeOverlay = netip.MustParsePrefix("10.255.0.0/16")

func (f *fakeAgent) egressList() []policy.EgressRule {
	var out []policy.EgressRule
	for e := range f.egress {
		out = append(out, e)
	}
	policy.SortEgressRules(out)
	return out
}

func (f *fakeAgent) ingressList() []policy.IngressRule {
	out := slices.Collect(maps.Keys(f.ingress))
	policy.SortIngressRules(out)
	return out
}

// applyIngress changes e and returns the API's answer code.
func (f *fakeAgent) applyIngress(e policy.IngressRule, present bool) int {
	had := f.ingress[e]
	switch {
	case present && had:
		return http.StatusOK
	case present:
		f.ingress[e] = true
		return http.StatusCreated
	case had:
		delete(f.ingress, e)
		return http.StatusNoContent
	}
	return http.StatusNotFound
}

// applyEgress changes e and returns the API's answer code.
func (f *fakeAgent) applyEgress(e policy.EgressRule, present bool) int {
	had := f.egress[e]
	switch {
	case present && had:
		return http.StatusOK
	case present:
		f.egress[e] = true
		return http.StatusCreated
	case had:
		delete(f.egress, e)
		return http.StatusNoContent
	}
	return http.StatusNotFound
}

// apply changes r and returns the API's answer code.
func (f *fakeAgent) apply(r cellapi.PolicyRule, present bool) int {
	had := f.set[r]
	switch {
	case present && had:
		return http.StatusOK
	case present:
		f.set[r] = true
		return http.StatusCreated
	case had:
		delete(f.set, r)
		return http.StatusNoContent
	}
	return http.StatusNotFound
}

func (f *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/policies":
		json.NewEncoder(w).Encode(cellapi.PolicyList{Policies: f.list()})
		return
	case r.Method == http.MethodGet && r.URL.Path == "/v1/status":
		json.NewEncoder(w).Encode(cellapi.Status{Name: "c1", Overlay: fakeOverlay.String()})
		return
	case r.Method == http.MethodGet && r.URL.Path == "/v1/egress-rules":
		l := cellapi.EgressRuleList{EgressRules: []cellapi.EgressRule{}}
		for _, e := range f.egressList() {
			l.EgressRules = append(l.EgressRules, cellapi.FromEgressRule(e))
		}
		json.NewEncoder(w).Encode(l)
		return
	case r.Method == http.MethodGet && r.URL.Path == "/v1/ingress-rules":
		l := cellapi.IngressRuleList{IngressRules: []cellapi.IngressRule{}}
		for _, e := range f.ingressList() {
			l.IngressRules = append(l.IngressRules, cellapi.FromIngressRule(e))
		}
		json.NewEncoder(w).Encode(l)
		return
	}
	f.reqs = append(f.reqs, r.Method+" "+r.URL.Path)
	defer func() { f.states = append(f.states, f.list()) }()
	switch {
	case r.URL.Path == "/v1/policies": // one rule: the agent signs
		var pr cellapi.PolicyRule
		json.NewDecoder(r.Body).Decode(&pr)
		code := f.apply(pr, r.Method == http.MethodPost)
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]string{"error": http.StatusText(code)})
	case r.URL.Path == "/v1/policy-changes":
		var req cellapi.PolicyChangesRequest
		json.NewDecoder(r.Body).Decode(&req)
		f.pushes = append(f.pushes, req)
		// As the agent: egress rules of one app must not overlap, else
		// the whole batch is refused.
		after := maps.Clone(f.egress)
		inAfter := maps.Clone(f.ingress)
		for _, c := range req.Changes {
			if c.Ingress != nil {
				e, err := c.Ingress.Rule(fakeOverlay)
				if err != nil {
					w.WriteHeader(http.StatusBadRequest)
					json.NewEncoder(w).Encode(map[string]string{"error": "nothing changed: " + err.Error()})
					return
				}
				inAfter[e] = c.Present
			}
			if c.Egress != nil {
				e, err := c.Egress.Rule(fakeOverlay)
				if err != nil {
					w.WriteHeader(http.StatusBadRequest)
					json.NewEncoder(w).Encode(map[string]string{"error": "nothing changed: " + err.Error()})
					return
				}
				after[e] = c.Present
			}
		}
		var rules []policy.EgressRule
		for e, ok := range after {
			if ok {
				rules = append(rules, e)
			}
		}
		var inRules []policy.IngressRule
		for e, ok := range inAfter {
			if ok {
				inRules = append(inRules, e)
			}
		}
		_, err := policy.CheckEgressRules(rules, fakeOverlay)
		if err == nil {
			_, err = policy.CheckIngressRules(inRules, fakeOverlay)
		}
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		res := cellapi.PolicyChangesResponse{}
		for _, c := range req.Changes {
			if c.Ingress != nil {
				e, _ := c.Ingress.Rule(fakeOverlay)
				res.Results = append(res.Results, cellapi.PolicyChangeResult{Code: f.applyIngress(e, c.Present)})
				continue
			}
			if c.Egress != nil {
				e, _ := c.Egress.Rule(fakeOverlay)
				res.Results = append(res.Results, cellapi.PolicyChangeResult{Code: f.applyEgress(e, c.Present)})
				continue
			}
			res.Results = append(res.Results, cellapi.PolicyChangeResult{Code: f.apply(c.Rule, c.Present)})
		}
		json.NewEncoder(w).Encode(res)
	default:
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(map[string]string{"error": "not found"})
	}
}

// startFakeAgent serves f on a unix socket and points --socket at it.
func startFakeAgent(t *testing.T, rules ...policy.Rule) *fakeAgent {
	t.Helper()
	f := &fakeAgent{set: map[cellapi.PolicyRule]bool{}, egress: map[policy.EgressRule]bool{}, ingress: map[policy.IngressRule]bool{}}
	for _, r := range rules {
		f.set[cellapi.FromRule(r)] = true
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	socketPath = sock
	t.Setenv("WEFT_OPERATOR_KEY", "")
	return f
}

// weftPolicy runs `weft policy ARGS...` and returns its output and error.
func weftPolicy(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "weft", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(policyCmd())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"policy"}, args...))
	err := root.Execute()
	return out.String(), err
}

func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func tcp(src, dst string, lo, hi uint16) policy.Rule {
	return policy.Rule{Source: src, Destination: dst, Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: lo, End: hi}}
}

// TestPushIsOneBatch: a push without an operator key that replaces tcp
// 8082 by 8081-8090 is one request, which the agent applies as one batch:
// the set never lacks both rules (issue 22, item 9: the CLI removed, then
// added, one request each).
func TestPushIsOneBatch(t *testing.T) {
	old, repl := tcp("appA", "appB", 8082, 8082), tcp("appA", "appB", 8081, 8090)
	f := startFakeAgent(t, old, tcp("appA", "dns", 53, 53), tcp("appC", "web", 80, 80))
	file := writeFile(t, "p.yaml", `policies:
- {source: appA, destination: appB, protocol: tcp, ports: "8081-8090"}
- {source: appA, destination: dns, protocol: tcp, ports: "53"}
- {source: appC, destination: web, protocol: tcp, ports: "80"}
`)
	out, err := weftPolicy(t, "push", file)
	if err != nil || !strings.Contains(out, "- appA -> appB tcp 8082") || !strings.Contains(out, "1 added, 1 removed, 3 policies now") {
		t.Fatalf("push: %v\n%s", err, out)
	}
	if len(f.reqs) != 1 || f.reqs[0] != "POST /v1/policy-changes" || len(f.pushes[0].Changes) != 2 || !f.pushes[0].Push {
		t.Fatalf("requests %v, %+v; want one POST /v1/policy-changes with both changes, marked push", f.reqs, f.pushes)
	}
	for _, c := range f.pushes[0].Changes {
		if len(c.Sig) != 0 || len(c.Signer) != 0 {
			t.Errorf("change %+v is signed; without a key the agent signs", c)
		}
	}
	for i, st := range f.states {
		if !slices.Contains(st, cellapi.FromRule(old)) && !slices.Contains(st, cellapi.FromRule(repl)) {
			t.Errorf("state %d after %s holds neither 8082 nor 8081-8090: %v", i, f.reqs[i], st)
		}
	}
}

// TestPushLargeRemoval: a push that removes more than half of the set is
// refused with the diff and the hint, shown by --dry-run too, and goes
// through with --allow-large-removal, which the agent is told of (it
// checks again). An empty or null file is an error, not "0 policies now"
// (issue 22, item 5).
func TestPushLargeRemoval(t *testing.T) {
	rules := []policy.Rule{tcp("a", "b", 1, 1), tcp("a", "b", 2, 2), tcp("a", "b", 3, 3)}
	f := startFakeAgent(t, rules...)
	for _, data := range []string{"", "policies:\n", "policies: ~\n", "# all gone\n"} {
		file := writeFile(t, "p.yaml", data)
		if _, err := weftPolicy(t, "push", file); err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), `write "policies: []"`) {
			t.Errorf("push of %q: %v; want an error naming the file and policies: []", data, err)
		}
	}
	oneLeft := writeFile(t, "p.yaml", "policies:\n- {source: a, destination: b, protocol: tcp, ports: \"1\"}\n")
	out, err := weftPolicy(t, "push", oneLeft, "--dry-run")
	if err != nil || !strings.Contains(out, "- a -> b tcp 3") || !strings.Contains(out, "removes 2 of the 3 policies") || !strings.Contains(out, "--allow-large-removal") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	out, err = weftPolicy(t, "push", oneLeft)
	if err == nil || !strings.Contains(out, "- a -> b tcp 2") || !strings.Contains(err.Error(), "--allow-large-removal") {
		t.Fatalf("push removing 2 of 3: %v\n%s; want refused with the diff and the hint", err, out)
	}
	if len(f.reqs) != 0 || len(f.set) != 3 {
		t.Fatalf("refused pushes sent %v; set %v", f.reqs, f.list())
	}
	if out, err := weftPolicy(t, "push", oneLeft, "--allow-large-removal"); err != nil || !strings.Contains(out, "2 removed, 1 policies now") {
		t.Fatalf("allowed: %v\n%s", err, out)
	}
	if len(f.pushes) != 1 || !f.pushes[0].AllowLargeRemoval || len(f.set) != 1 {
		t.Fatalf("allowed push sent %+v; set %v", f.pushes, f.list())
	}
	// policies: [] empties the set, with the flag.
	empty := writeFile(t, "p.yaml", "policies: []\n")
	if _, err := weftPolicy(t, "push", empty); err == nil || !strings.Contains(err.Error(), "removes 1 of the 1 policies") {
		t.Fatalf("push of [] over 1 rule: %v; want refused", err)
	}
	if out, err := weftPolicy(t, "push", empty, "--allow-large-removal"); err != nil || !strings.Contains(out, "0 policies now") || len(f.set) != 0 {
		t.Fatalf("push of [] allowed: %v\n%s", err, out)
	}
}
