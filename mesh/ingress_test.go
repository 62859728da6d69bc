package mesh

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

func ingressKeys(rs []policy.IngressRule) string {
	var ks []string
	for _, r := range rs {
		ks = append(ks, r.Key())
	}
	return strings.Join(ks, " ")
}

// TestIngressReplicated: ingress rules are registers of the signed policy
// set, apart from app and egress rules: replicated to every cell,
// persisted, and signed in their own domain (an ingress signature does
// not verify the egress rule with the same fields, nor a from-host rule
// the same rule from a source range).
func TestIngressReplicated(t *testing.T) {
	dir := t.TempDir()
	a := startNode(t, "cell-a", nodeOpts{dir: dir})
	b := startNode(t, "cell-b", nodeOpts{join: a.joinAddr(), noOperatorKey: true})
	all := []*Mesh{a, b}
	waitMembers(t, all, 2)

	overlay := netip.MustParsePrefix("10.255.0.0/16")
	host, err := policy.ParseIngressRule("web", policy.IngressFromHost, "tcp", "8080", overlay)
	if err != nil {
		t.Fatal(err)
	}
	lan, err := policy.ParseIngressRule("web", "198.18.0.0/24", "tcp", "8080", overlay)
	if err != nil {
		t.Fatal(err)
	}
	stamp := uint64(time.Now().UnixNano())
	sign := func(r policy.IngressRule, present bool, stamp uint64) store.PolicyChange {
		c := store.PolicyChange{Ingress: r, Present: present, Stamp: stamp, Origin: "cli@test"}
		store.SignPolicyChange(&c, testOperator)
		return c
	}
	changed, errs := b.ApplyPolicyChanges([]store.PolicyChange{sign(host, true, stamp), sign(lan, true, stamp)})
	if !changed[0] || !changed[1] || errs[0] != nil || errs[1] != nil {
		t.Fatalf("ApplyPolicyChanges = %v, %v", changed, errs)
	}
	want := host.Key() + " " + lan.Key()
	eventually(t, 3*time.Second, "ingress rules converged", func() error {
		for _, m := range all {
			if got := ingressKeys(m.IngressRules()); got != want {
				return &mismatch{m.cfg.Name, got, want}
			}
			if len(m.EgressRules()) != 0 || len(m.Policies()) != 0 {
				return &mismatch{m.cfg.Name, "egress or app rules", "none"}
			}
		}
		return nil
	})

	// Signatures do not cross kinds or sources.
	asEgress := sign(lan, false, stamp+1)
	asEgress.Egress = policy.EgressRule{App: "web", Start: lan.Start, End: lan.End, Protocol: lan.Protocol, Ports: lan.Ports}
	asEgress.Ingress = policy.IngressRule{}
	asRange := sign(host, false, stamp+1)
	asRange.Ingress = lan
	bad, err := policy.ParseIngressRule("web", "10.255.3.0/24", "tcp", "80", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		c    store.PolicyChange
		want string
	}{
		{asEgress, "bad signature"},
		{asRange, "bad signature"},
		{sign(bad, true, stamp+1), "overlaps the overlay"},
	} {
		if _, err := a.ApplyPolicyChange(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ApplyPolicyChange(%s): %v, want %q", tc.c.RuleString(), err, tc.want)
		}
	}

	// Persisted.
	b.Shutdown()
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	a2 := startNode(t, "cell-a", nodeOpts{dir: dir})
	if got := ingressKeys(a2.IngressRules()); got != want {
		t.Fatalf("ingress rules after restart: [%s], want [%s]", got, want)
	}
	if changed, err := a2.ApplyPolicyChange(sign(host, false, a2.IngressStamp(host)+1)); !changed || err != nil {
		t.Fatalf("removal: %v, %v", changed, err)
	}
	if got := ingressKeys(a2.IngressRules()); got != lan.Key() {
		t.Fatalf("after removal: [%s]", got)
	}
}

type mismatch struct{ cell, got, want string }

func (m *mismatch) Error() string { return m.cell + " has [" + m.got + "], want [" + m.want + "]" }
