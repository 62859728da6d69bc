package mesh

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/mesh/store"
)

func routeList(rs []store.Route) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.String() + ";")
	}
	return b.String()
}

// TestRoutesReplicateAndPersist: a route mapped on one cell is seen by the
// others and survives a restart; unmapping travels too; a change not signed
// by a trusted operator is refused.
func TestRoutesReplicateAndPersist(t *testing.T) {
	dir := t.TempDir()
	a := startNode(t, "cell-a", nodeOpts{dir: dir})
	b := startNode(t, "cell-b", nodeOpts{join: a.joinAddr()})
	waitMembers(t, []*Mesh{a, b}, 2)

	r := store.Route{Host: "backend", Domain: "apps.internal", App: "appB"}
	if changed, err := a.MapRoute(r, true); err != nil || !changed {
		t.Fatalf("MapRoute: %v %v", changed, err)
	}
	if changed, _ := a.MapRoute(r, true); changed {
		t.Fatal("mapping twice reported a change")
	}
	want := routeList([]store.Route{r})
	eventually(t, 5*time.Second, "route on b", func() error {
		if got := routeList(b.Routes()); got != want {
			return fmt.Errorf("b has %q", got)
		}
		return nil
	})

	// Unsigned or signed by a stranger: refused, nothing changes.
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	bad := store.RouteChange{Route: store.Route{Host: "evil", Domain: "apps.internal", App: "x"}, Present: true, Stamp: uint64(time.Now().UnixNano()), Origin: "cli"}
	if _, err := b.ApplyRouteChange(bad); err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Fatalf("unsigned route change: %v", err)
	}
	store.SignRouteChange(&bad, stranger)
	if _, err := b.ApplyRouteChange(bad); err == nil || !strings.Contains(err.Error(), "untrusted key") {
		t.Fatalf("route change signed by a stranger: %v", err)
	}
	if _, err := a.MapRoute(store.Route{Host: "no good", Domain: "apps.internal", App: "x"}, true); err == nil {
		t.Fatal("a hostname with a space was accepted")
	}

	// Persisted: a restarted cell alone still has it.
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	a2 := startNode(t, "cell-a", nodeOpts{dir: dir, join: []string{deadAddr(t)}})
	if got := routeList(a2.Routes()); got != want {
		t.Fatalf("after restart: %q, want %q", got, want)
	}

	// Unmapping on b reaches the others.
	if changed, err := b.MapRoute(r, false); err != nil || !changed {
		t.Fatalf("unmap: %v %v", changed, err)
	}
	c := startNode(t, "cell-c", nodeOpts{join: b.joinAddr()})
	eventually(t, 5*time.Second, "unmapped everywhere", func() error {
		if got := routeList(c.Routes()) + routeList(b.Routes()); got != "" {
			return fmt.Errorf("still mapped: %q", got)
		}
		return nil
	})
}
