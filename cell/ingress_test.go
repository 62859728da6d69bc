package cell

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// TestIngressAPI: ingress rules through the operator API: added unsigned
// (the agent signs) or signed by the client, listed apart from egress
// rules, removed; a source inside the overlay, icmp or a missing port is a
// 400 naming the rule, and the set stays as it was.
func TestIngressAPI(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	a, c := testAgent(t, priv, pub)
	ctx := context.Background()
	host := IngressRule{App: "web", Source: "host", Protocol: "tcp", Ports: "8080"}
	lan := IngressRule{App: "web", Source: "198.18.0.0/24", Protocol: "udp", Ports: "53-54"}
	if res, err := c.ChangeIngressRule(ctx, nil, host, true); err != nil || res.Code != http.StatusCreated {
		t.Fatalf("add (agent signs): %+v %v", res, err)
	}
	if res, err := c.ChangeIngressRule(ctx, priv, lan, true); err != nil || res.Code != http.StatusCreated {
		t.Fatalf("add (client signs): %+v %v", res, err)
	}
	got, err := c.IngressRules(ctx)
	if err != nil || len(got) != 2 || got[0] != host || got[1] != lan {
		t.Fatalf("ingress rules: %+v %v", got, err)
	}
	for _, tc := range []struct {
		r    IngressRule
		want string
	}{
		{IngressRule{App: "web", Source: "10.255.3.0/24", Protocol: "tcp", Ports: "80"}, "overlaps the overlay"},
		{IngressRule{App: "web", Source: "host", Protocol: "icmp", Ports: "80"}, "ingress rules are tcp or udp"},
		{IngressRule{App: "web", Source: "host", Protocol: "tcp"}, "needs a port"},
		{IngressRule{App: "web", Source: "nowhere", Protocol: "tcp", Ports: "80"}, `source "nowhere"`},
	} {
		res, err := c.ApplyPolicyChanges(ctx, []SignedPolicyChange{{Ingress: &tc.r, Present: true}})
		if err != nil || res[0].Code != http.StatusBadRequest || !strings.Contains(res[0].Error, tc.want) {
			t.Errorf("%+v: %+v %v; want 400 %q", tc.r, res, err, tc.want)
		}
	}
	if len(a.mesh.IngressRules()) != 2 || len(a.mesh.EgressRules()) != 0 || len(a.mesh.Policies()) != 0 {
		t.Fatalf("sets after bad input: %v %v %v", a.mesh.IngressRules(), a.mesh.EgressRules(), a.mesh.Policies())
	}
	if _, err := c.ChangeIngressRule(ctx, priv, host, false); err != nil {
		t.Fatalf("remove: %v", err)
	}
	var se *StatusError
	if _, err := c.ChangeIngressRule(ctx, nil, host, false); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("remove again: %v; want 404", err)
	}
}
