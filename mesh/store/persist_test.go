package store

import (
	"crypto/ed25519"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStateFileRoundTrip: what Snapshot and WriteState write, Load reads
// back: own endpoints (not others'), policy and route registers, lease
// records that fit, the sequence and the clock.
func TestStateFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := newTestStore("cell-a")
	s.SetLocalEndpoint(netip.MustParseAddr("10.255.1.2"), "web", "c1", false)
	var res Result
	s.MergeEndpoint(EndpointRec{Owner: "cell-b", IP: netip.MustParseAddr("10.255.2.2"), App: "db", Seq: 1}, false, &res,
		func(string) (netip.Prefix, bool) { return netip.Prefix{}, false })
	if _, ok := s.SetLocalPolicy(rule("web", "db", 5432), true, testOperator); !ok {
		t.Fatal("SetLocalPolicy: no change")
	}
	rc := RouteChange{Route: Route{Host: "api", Domain: "apps.internal", App: "web"}, Present: true, Stamp: s.NextStamp(), Origin: "cell-a"}
	SignRouteChange(&rc, testOperator)
	e, err := s.CheckRouteChange(rc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.MergeRouteChange(rc, e); err != nil {
		t.Fatal(err)
	}
	s.PutLease(LeaseRec{Node: "cell-a", Subnet: netip.MustParsePrefix("10.255.1.0/24"), Time: 1, Seq: s.NextSeq()})
	s.PutLease(LeaseRec{Node: "cell-x", Subnet: netip.MustParsePrefix("10.254.1.0/24"), Time: 1, Seq: 1})
	if err := WriteState(dir, s.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, StateFileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state.json: %v, %v", fi, err)
	}

	r := newTestStore("cell-a")
	overlay := netip.MustParsePrefix("10.255.0.0/16")
	leases, restored, err := r.Load(dir, func(p netip.Prefix) bool { return overlay.Contains(p.Addr()) })
	if err != nil || restored {
		t.Fatalf("Load: %v (restored %v)", err, restored)
	}
	if len(leases) != 1 || leases[0] != "cell-a" || r.NumLeases() != 1 {
		t.Errorf("leases loaded %v, %d held; want only cell-a's", leases, r.NumLeases())
	}
	if got := ruleKeys(r.Rules()); got != rule("web", "db", 5432).Key() {
		t.Errorf("policies %q", got)
	}
	if got := r.Routes(); len(got) != 1 || got[0] != rc.Route {
		t.Errorf("routes %v", got)
	}
	if _, ok := r.Endpoint("cell-b", netip.MustParseAddr("10.255.2.2")); ok || !r.HasLocalEndpoints() {
		t.Error("endpoints: want this cell's only")
	}
	if r.Seq() != s.Seq() || r.Clock() != s.Clock() {
		t.Errorf("seq %d clock %d, want %d %d", r.Seq(), r.Clock(), s.Seq(), s.Clock())
	}
}

// TestLoadKeepsUnverifiedAside: registers that no trusted key verifies
// are not applied but kept aside, and come back once a key that verifies
// them is trusted again.
func TestLoadKeepsUnverifiedAside(t *testing.T) {
	dir := t.TempDir()
	s := newTestStore("cell-a")
	s.SetLocalPolicy(rule("web", "db", 5432), true, testOperator)
	if err := WriteState(dir, s.Snapshot()); err != nil {
		t.Fatal(err)
	}
	other := ed25519.NewKeyFromSeed(make([]byte, 32))
	r := New("cell-a", []ed25519.PublicKey{other.Public().(ed25519.PublicKey)}, slog.New(slog.DiscardHandler))
	if _, _, err := r.Load(dir, func(netip.Prefix) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if len(r.Rules()) != 0 {
		t.Fatalf("a register no trusted key verifies was applied: %v", r.Rules())
	}
	aside, _ := filepath.Glob(filepath.Join(dir, StateFileName+asideSuffix+"*"))
	if len(aside) != 1 {
		t.Fatalf("copies kept aside: %v", aside)
	}
	if err := WriteState(dir, r.Snapshot()); err != nil { // state.json loses it
		t.Fatal(err)
	}
	back := newTestStore("cell-a")
	_, restored, err := back.Load(dir, func(netip.Prefix) bool { return true })
	if err != nil || !restored || !strings.Contains(ruleKeys(back.Rules()), rule("web", "db", 5432).Key()) {
		t.Fatalf("trusted again: %v, restored %v, rules %v", err, restored, back.Rules())
	}
}
