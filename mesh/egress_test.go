package mesh

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

func egressRule(t *testing.T, app, dst, proto, ports string) policy.EgressRule {
	t.Helper()
	r, err := policy.ParseEgressRule(app, dst, proto, ports, netip.MustParsePrefix("10.255.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func egressChange(r policy.EgressRule, present bool, stamp uint64, key ed25519.PrivateKey) store.PolicyChange {
	c := store.PolicyChange{Egress: r, Present: present, Stamp: stamp, Origin: "cli@test"}
	store.SignPolicyChange(&c, key)
	return c
}

func egressKeys(rs []policy.EgressRule) string {
	var ks []string
	for _, r := range rs {
		ks = append(ks, r.Key())
	}
	return strings.Join(ks, " ")
}

func waitEgress(t *testing.T, ms []*Mesh, want ...policy.EgressRule) {
	t.Helper()
	eventually(t, 3*time.Second, "egress rules converged", func() error {
		for _, m := range ms {
			if got := egressKeys(m.EgressRules()); got != egressKeys(want) {
				return fmt.Errorf("%s has [%s], want [%s]", m.cfg.Name, got, egressKeys(want))
			}
		}
		return nil
	})
}

// TestEgressReplicated: egress rules are registers of the signed policy
// set: a signed change made on a cell without the operator key reaches
// every cell, unsigned, forged and tampered ones are refused, app rules and
// egress rules of the same app live side by side, and a restarted cell
// finds its egress rules in state.json.
func TestEgressReplicated(t *testing.T) {
	dir := t.TempDir()
	a := startNode(t, "cell-a", nodeOpts{dir: dir})
	b := startNode(t, "cell-b", nodeOpts{join: a.joinAddr(), noOperatorKey: true})
	all := []*Mesh{a, b}
	waitMembers(t, all, 2)

	stamp := uint64(time.Now().UnixNano())
	web := egressRule(t, "web", "198.18.0.0/24", "tcp", "80")
	app := rule("web", "db", 5432)
	cs := []store.PolicyChange{egressChange(web, true, stamp, testOperator), {Rule: app, Present: true, Stamp: stamp, Origin: "cli@test"}}
	store.SignPolicyChange(&cs[1], testOperator)
	changed, errs := b.ApplyPolicyChanges(cs)
	if !changed[0] || !changed[1] || errs[0] != nil || errs[1] != nil {
		t.Fatalf("ApplyPolicyChanges = %v, %v", changed, errs)
	}
	waitEgress(t, all, web)
	waitPolicies(t, all, app)

	// Refused: unsigned, tampered, untrusted, inside the overlay.
	_, stranger, _ := ed25519.GenerateKey(nil)
	tampered := egressChange(web, false, stamp+1, testOperator)
	tampered.Egress.End = netip.MustParseAddr("198.18.0.254")
	overlay := egressChange(policy.EgressRule{App: "web", Start: netip.MustParseAddr("10.255.1.0"),
		End: netip.MustParseAddr("10.255.1.255"), Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 80, End: 80}}, true, stamp+1, testOperator)
	for _, tc := range []struct {
		c    store.PolicyChange
		want string
	}{
		{store.PolicyChange{Egress: web, Present: false, Stamp: stamp + 1, Origin: "cli@x"}, "not signed"},
		{tampered, "bad signature"},
		{egressChange(web, false, stamp+1, stranger), "untrusted key"},
		{overlay, "inside the overlay"},
	} {
		if _, err := a.ApplyPolicyChange(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ApplyPolicyChange(%s): %v, want %q", tc.c.RuleString(), err, tc.want)
		}
	}
	// A forged removal by gossip is refused too.
	forged := egressChange(web, false, stamp+2, stranger).Reg()
	before := b.RejectedPolicies()
	(*delegate)(b).NotifyMsg(store.Encode(store.MsgPolicy, forged))
	if b.RejectedPolicies() != before+1 {
		t.Fatalf("forged egress removal by gossip not counted as rejected")
	}
	// An egress signature does not verify the app rule with the same fields.
	swapped := egressChange(web, false, stamp+3, testOperator)
	swapped.Rule, swapped.Egress = policy.Rule{Source: "web", Destination: "x", Protocol: policy.ProtoTCP, Ports: web.Ports}, policy.EgressRule{}
	if _, err := a.ApplyPolicyChange(swapped); err == nil || !strings.Contains(err.Error(), "bad signature") {
		t.Errorf("egress signature on an app rule: %v, want bad signature", err)
	}
	waitEgress(t, all, web)

	// Persisted: a restarted cell enforces the egress rules alone.
	b.Shutdown()
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, store.StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	var sf store.StateFile
	if err := json.Unmarshal(raw, &sf); err != nil {
		t.Fatal(err)
	}
	if len(sf.Policies) != 2 {
		t.Fatalf("state.json holds %d registers, want 2 (one app rule, one egress rule)", len(sf.Policies))
	}
	a2 := startNode(t, "cell-a", nodeOpts{dir: dir})
	if got := egressKeys(a2.EgressRules()); got != web.Key() {
		t.Fatalf("egress rules after restart: [%s], want [%s]", got, web.Key())
	}
	if got := ruleKeys(a2.Policies()); got != app.Key() {
		t.Fatalf("policies after restart: [%s]", got)
	}

	// Removal: a signed removal above the add's stamp takes it away.
	if changed, err := a2.ApplyPolicyChange(egressChange(web, false, a2.EgressStamp(web)+1, testOperator)); !changed || err != nil {
		t.Fatalf("removal: %v, %v", changed, err)
	}
	var stale *store.StaleChangeError
	if _, err := a2.ApplyPolicyChange(egressChange(web, true, stamp, testOperator)); !errors.As(err, &stale) {
		t.Fatalf("re-add below the removal's stamp: %v, want store.StaleChangeError", err)
	}
	if got := a2.EgressRules(); len(got) != 0 {
		t.Fatalf("egress rules after removal: %v", got)
	}
}
