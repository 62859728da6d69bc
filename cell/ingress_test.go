package cell

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/weft-net/weft/cellapi"
)

// TestIngressAPI: ingress rules through the operator API: added unsigned
// (the agent signs) or signed by the client, listed apart from egress
// rules, removed; a source inside the overlay, icmp or a missing port is a
// 400 naming the rule, and the set stays as it was.
func TestIngressAPI(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	a, c := testAgent(t, priv, pub)
	ctx := context.Background()
	host := cellapi.IngressRule{App: "web", Source: "host", Protocol: "tcp", Ports: "8080"}
	lan := cellapi.IngressRule{App: "web", Source: "198.18.0.0/24", Protocol: "udp", Ports: "53-54"}
	if res, err := ChangeIngressRule(ctx, c, nil, host, true); err != nil || res.Code != http.StatusCreated {
		t.Fatalf("add (agent signs): %+v %v", res, err)
	}
	if res, err := ChangeIngressRule(ctx, c, priv, lan, true); err != nil || res.Code != http.StatusCreated {
		t.Fatalf("add (client signs): %+v %v", res, err)
	}
	got, err := c.IngressRules(ctx)
	if err != nil || len(got) != 2 || got[0] != host || got[1] != lan {
		t.Fatalf("ingress rules: %+v %v", got, err)
	}
	for _, tc := range []struct {
		r    cellapi.IngressRule
		want string
	}{
		{cellapi.IngressRule{App: "web", Source: "10.255.3.0/24", Protocol: "tcp", Ports: "80"}, "overlaps the overlay"},
		{cellapi.IngressRule{App: "web", Source: "host", Protocol: "icmp", Ports: "80"}, "ingress rules are tcp or udp"},
		{cellapi.IngressRule{App: "web", Source: "host", Protocol: "tcp"}, "needs a port"},
		{cellapi.IngressRule{App: "web", Source: "nowhere", Protocol: "tcp", Ports: "80"}, `source "nowhere"`},
	} {
		res, err := c.ApplyPolicyChanges(ctx, []cellapi.SignedPolicyChange{{Ingress: &tc.r, Present: true}})
		if err != nil || res[0].Code != http.StatusBadRequest || !strings.Contains(res[0].Error, tc.want) {
			t.Errorf("%+v: %+v %v; want 400 %q", tc.r, res, err, tc.want)
		}
	}
	if len(a.mesh.IngressRules()) != 2 || len(a.mesh.EgressRules()) != 0 || len(a.mesh.Policies()) != 0 {
		t.Fatalf("sets after bad input: %v %v %v", a.mesh.IngressRules(), a.mesh.EgressRules(), a.mesh.Policies())
	}
	// Overlapping rules of one app: 400 naming both, the set unchanged,
	// whether added alone or in a push with other changes.
	wide := cellapi.IngressRule{App: "web", Source: "host", Protocol: "tcp", Ports: "8000-8100"}
	var se *cellapi.StatusError
	if _, err := ChangeIngressRule(ctx, c, priv, wide, true); !errors.As(err, &se) || se.Code != http.StatusBadRequest ||
		!strings.Contains(se.Message, "ingress rule web <- cell hosts tcp 8000-8100 overlaps ingress rule web <- cell hosts tcp 8080") {
		t.Errorf("overlapping rule: %v; want 400 naming both rules", err)
	}
	other := cellapi.IngressRule{App: "api", Source: "host", Protocol: "tcp", Ports: "9000"}
	_, err = c.PolicyChanges(ctx, cellapi.PolicyChangesRequest{Push: true, Changes: []cellapi.SignedPolicyChange{
		{Ingress: &other, Present: true}, {Ingress: &wide, Present: true}}})
	if !errors.As(err, &se) || se.Code != http.StatusBadRequest || !strings.Contains(se.Message, "overlaps ingress rule") {
		t.Errorf("push with an overlapping rule: %v; want 400", err)
	}
	if got, _ := c.IngressRules(ctx); len(got) != 2 {
		t.Errorf("ingress rules after overlapping changes: %+v; want the 2 there were", got)
	}
	// Replacing a rule by an overlapping one in one batch is no overlap.
	if _, err := c.PolicyChanges(ctx, cellapi.PolicyChangesRequest{Push: true, Changes: []cellapi.SignedPolicyChange{
		{Ingress: &wide, Present: true}, {Ingress: &host}}}); err != nil {
		t.Errorf("replace 8080 by 8000-8100 in one push: %v", err)
	}
	if _, err := ChangeIngressRule(ctx, c, priv, wide, false); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, err := ChangeIngressRule(ctx, c, priv, host, true); err != nil {
		t.Fatalf("add again: %v", err)
	}
	if _, err := ChangeIngressRule(ctx, c, priv, host, false); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, err := ChangeIngressRule(ctx, c, nil, host, false); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("remove again: %v; want 404", err)
	}
}
