package cell

import (
	"context"
	"slices"
	"testing"

	"github.com/weft-net/weft/mesh"
)

// TestListApps: GET /v1/apps through a real server lists the apps of
// registered containers and of rules, sorted, each once.
func TestListApps(t *testing.T) {
	a, c, subnet := leasedAgent(t)
	if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: subnet.Addr().Next().Next(), App: "acme/prod/db", Name: "c1"}); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]string{{"web", "acme/prod/db"}, {"web", "cache"}} {
		if _, err := a.mesh.AddPolicy(tcpRule(r[0], r[1], 80, 80)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.Apps(context.Background())
	if want := []string{"acme/prod/db", "cache", "web"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("apps %q (%v), want %q", got, err, want)
	}
}
