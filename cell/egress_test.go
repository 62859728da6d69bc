package cell

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/policy"
)

// TestEgressAPI: egress rules through the operator API: added unsigned (the
// agent signs) or signed by the client, listed, warned about, removed;
// bad input is a 4xx naming the rule and the set stays as it was.
func TestEgressAPI(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	a, c := testAgent(t, priv, pub)
	ctx := context.Background()
	web := cellapi.EgressRule{App: "web", Destination: "198.18.0.0/24", Protocol: "tcp", Ports: "80"}
	if res, err := ChangeEgressRule(ctx, c, nil, web, true); err != nil || res.Code != http.StatusCreated {
		t.Fatalf("add (agent signs): %+v %v", res, err)
	}
	all := cellapi.EgressRule{App: "*", Destination: "0.0.0.0/0", Protocol: "icmp"}
	res, err := ChangeEgressRule(ctx, c, priv, all, true)
	if err != nil || res.Code != http.StatusCreated || len(res.Warnings) != 2 ||
		!strings.Contains(res.Warnings[0], "0.0.0.0/0 allows every address") {
		t.Fatalf("add 0.0.0.0/0 (client signs): %+v %v; want 201 and warnings (every address, overlay part)", res, err)
	}
	got, err := c.EgressRules(ctx)
	if err != nil || len(got) != 2 || got[0] != all || got[1] != web {
		t.Fatalf("egress rules: %+v %v", got, err)
	}

	for _, tc := range []struct {
		r    cellapi.EgressRule
		want string
	}{
		{cellapi.EgressRule{App: "web", Destination: "198.18.0.0/16", Protocol: "tcp", Ports: "80-81"}, "web -> 198.18.0.0/24 tcp 80 overlaps egress rule web -> 198.18.0.0/16 tcp 80-81"},
		{cellapi.EgressRule{App: "web", Destination: "10.0.0.1/24", Protocol: "tcp"}, "host bits are set; the network is 10.0.0.0/24"},
		{cellapi.EgressRule{App: "web", Destination: "10.255.3.0/24", Protocol: "tcp"}, "inside the overlay"},
		{cellapi.EgressRule{App: "web", Destination: "10.0.0.0/8", Protocol: "icmp", Ports: "8"}, "icmp rules take no ports"},
		{cellapi.EgressRule{App: "web", Destination: "nowhere", Protocol: "tcp"}, `invalid destination "nowhere"`},
	} {
		// Unsigned, so that the agent, not the client, judges the rule.
		res, err := c.ApplyPolicyChanges(ctx, []cellapi.SignedPolicyChange{{Egress: &tc.r, Present: true}})
		var se *cellapi.StatusError
		switch {
		case errors.As(err, &se):
			if se.Code != http.StatusBadRequest || !strings.Contains(se.Message, tc.want) {
				t.Errorf("%+v: %v; want 400 %q", tc.r, err, tc.want)
			}
		case err != nil:
			t.Errorf("%+v: %v", tc.r, err)
		case res[0].Code != http.StatusBadRequest || !strings.Contains(res[0].Error, tc.want):
			t.Errorf("%+v: %+v; want 400 %q", tc.r, res[0], tc.want)
		}
	}
	if n := len(a.mesh.EgressRules()); n != 2 {
		t.Fatalf("bad input changed the set: %d rules", n)
	}

	if _, err := ChangeEgressRule(ctx, c, priv, web, false); err != nil {
		t.Fatalf("remove: %v", err)
	}
	var se *cellapi.StatusError
	if _, err := ChangeEgressRule(ctx, c, nil, web, false); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("remove again: %v; want 404", err)
	}
	if got := a.mesh.EgressRules(); len(got) != 1 || got[0].App != "*" {
		t.Fatalf("after removal: %v", got)
	}
	if n := len(a.mesh.Policies()); n != 0 {
		t.Fatalf("egress rules counted as network policies: %d", n)
	}
}

// TestEgressDefault: `weft init --egress-default public` on a new cluster
// makes the first agent add policy.PublicEgress once, signed by its key.
func TestEgressDefault(t *testing.T) {
	dir := t.TempDir()
	if err := InitEgressDefault(dir, "public", false); err == nil || !strings.Contains(err.Error(), "new cluster") {
		t.Fatalf("public on a joining cell: %v; want an error naming the new cluster", err)
	}
	if err := InitEgressDefault(dir, "open", true); err == nil || !strings.Contains(err.Error(), "want deny or public") {
		t.Fatalf("unknown mode: %v", err)
	}
	if err := InitEgressDefault(dir, "public", true); err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(nil)
	a, _ := testAgent(t, priv, pub)
	a.cfg.StateDir = dir
	for range 2 { // the second start finds the file renamed
		if err := a.applyEgressDefault(); err != nil {
			t.Fatal(err)
		}
	}
	want := policy.PublicEgress()
	if got := a.mesh.EgressRules(); !slices.Equal(got, want) {
		t.Fatalf("egress rules %v, want %v", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, EgressDefaultFile+".applied")); err != nil {
		t.Fatal(err)
	}
}

// TestPushAllOrNothing: a push (POST /v1/policy-changes with push set)
// that holds an invalid change, here an egress rule inside the overlay,
// is refused whole with 400 naming the rule: its valid app rule and
// egress rule are not applied. Without push the valid changes apply.
func TestPushAllOrNothing(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	a, c := testAgent(t, priv, pub)
	ctx := context.Background()
	good := cellapi.EgressRule{App: "web", Destination: "198.18.0.0/24", Protocol: "tcp", Ports: "443"}
	bad := cellapi.EgressRule{App: "web", Destination: "10.255.3.0/24", Protocol: "tcp"}
	changes := []cellapi.SignedPolicyChange{
		{Rule: cellapi.FromRule(tcpRule("a", "b", 80, 80)), Present: true},
		{Egress: &good, Present: true},
		{Egress: &bad, Present: true},
	}
	_, err := c.PolicyChanges(ctx, cellapi.PolicyChangesRequest{Push: true, Changes: changes})
	var se *cellapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusBadRequest || !strings.Contains(se.Message, "nothing changed") ||
		!strings.Contains(se.Message, `"10.255.3.0/24"`) || !strings.Contains(se.Message, "inside the overlay") {
		t.Fatalf("push with a bad egress rule: %v; want 400 naming it", err)
	}
	if n, m := len(a.mesh.Policies()), len(a.mesh.EgressRules()); n != 0 || m != 0 {
		t.Fatalf("a refused push changed the set: %d policies, %d egress rules", n, m)
	}
	res, err := c.PolicyChanges(ctx, cellapi.PolicyChangesRequest{Changes: changes})
	if err != nil || res[0].Code != http.StatusCreated || res[1].Code != http.StatusCreated || res[2].Code != http.StatusBadRequest {
		t.Fatalf("the same changes, not a push: %+v %v; want 201, 201, 400", res, err)
	}
}
