package cell

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/policy/engine"
)

// TestReconcileAppliesDifference: a pass over an unchanged mesh compiles
// no table (the engine keeps the same one); a changed rule or endpoint
// is compiled once, on the next pass; desiredState carries the local
// containers for the guard and the DNS clients; a pass without a settled
// subnet (a re-pick under way) applies nothing.
func TestReconcileAppliesDifference(t *testing.T) {
	a, _, subnet := leasedAgent(t)
	a.reconcileNow()
	first := a.engine.Table()
	a.reconcileNow()
	if a.engine.Table() != first {
		t.Fatal("an unchanged mesh compiled a new table")
	}

	if _, err := a.mesh.AddPolicy(tcpRule("appA", "appB", 8080, 8080)); err != nil {
		t.Fatal(err)
	}
	a.reconcileNow()
	second := a.engine.Table()
	if second == first {
		t.Fatal("a new rule compiled no table")
	}
	a.reconcileNow()
	if a.engine.Table() != second {
		t.Fatal("the same rules compiled again")
	}

	ip := subnet.Addr().Next().Next()
	if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: ip, App: "appB", Name: "cb"}); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	d := a.desiredState()
	a.mu.Unlock()
	if d.subnet != subnet || !d.dns.local[ip] || len(d.guard) != 1 || d.guard[0].IP != ip ||
		len(d.appIPs["appB"]) != 1 || d.appIPs["appB"][0] != ip {
		t.Fatalf("desired state with one local container: %+v", d)
	}
	// The endpoints first, then the cell host (engine.HostApp at .1).
	want := []engine.Endpoint{{IP: ip, App: "appB", Local: true}, {IP: subnet.Addr().Next(), App: engine.HostApp, Local: true}}
	if len(d.table.eps) != 2 || d.table.eps[0] != want[0] || d.table.eps[1] != want[1] {
		t.Fatalf("table endpoints %+v, want %+v", d.table.eps, want)
	}
	a.reconcileNow()
	if a.engine.Table() == second {
		t.Fatal("a new endpoint compiled no table")
	}

	// Nothing is applied while the lease is not settled: the table stays.
	third := a.engine.Table()
	a.mu.Lock()
	d.subnet, d.table = netip.Prefix{}, &tableInputs{}
	a.applyLocked(d)
	a.mu.Unlock()
	if a.engine.Table() != third {
		t.Fatal("a pass without a settled subnet compiled a table")
	}
}

// TestRenumberWithContainersExits: a lease that moves while a container
// is attached (the mesh re-picks only an empty cell, so this is a race
// with an attach) is not followed in process: renumberLocked leaves the
// data plane alone and returns the error on which the agent exits, so
// that its service manager restarts it on the new subnet (lease.json).
// Without containers it goes on to rebuild, which needs the overlay: not
// reached here (e2e TestSubnetConflict covers it).
func TestRenumberWithContainersExits(t *testing.T) {
	a, _, subnet := leasedAgent(t)
	ip := subnet.Addr().Next().Next()
	if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: ip, App: "appB", Name: "cb"}); err != nil {
		t.Fatal(err)
	}
	to := netip.MustParsePrefix("10.255.99.0/24")
	a.mu.Lock()
	err := a.renumberLocked(to)
	a.mu.Unlock()
	if err == nil {
		t.Fatal("renumbered with a container attached, want an error to exit on")
	}
	for _, want := range []string{"1 containers attached", to.String(), "restarts"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if a.applied != nil || a.ov != nil {
		t.Errorf("renumberLocked touched the data plane: applied %v, overlay %v", a.applied != nil, a.ov != nil)
	}
}
