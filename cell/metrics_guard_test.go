package cell

import (
	"fmt"
	"testing"

	"github.com/weft-net/weft/overlay"
)

// TestGuardDropsByApp: the guard's per-veth elements become per-app
// counts that only grow, through an element's expiry, a rebuilt table
// (counts restart) and its container's removal; the first guardAppsTop
// apps are named, later ones summed under (other); a veth of no container
// is (unregistered).
func TestGuardDropsByApp(t *testing.T) {
	var g guardDrops
	apps := map[string]string{"wa": "appA", "wb": "appB"}
	appOf := func(v string) string { return apps[v] }
	read := func(els ...overlay.VethDrops) map[appReason]uint64 { return g.update(els, appOf) }
	sp := func(veth string, n uint64) overlay.VethDrops {
		return overlay.VethDrops{Veth: veth, Reason: overlay.GuardSpoofed, Packets: n}
	}

	got := read(sp("wa", 3), sp("wb", 1), overlay.VethDrops{Veth: "wx", Reason: overlay.GuardToCell, Packets: 2})
	want := map[appReason]uint64{{"appA", "spoofed"}: 3, {"appB", "spoofed"}: 1, {"(unregistered)", "to_cell"}: 2}
	check := func(step string) {
		t.Helper()
		for k, n := range want {
			if got[k] != n {
				t.Errorf("%s: %v = %d, want %d (all: %v)", step, k, got[k], n, got)
			}
		}
	}
	check("first read")

	// appA's container went and its element expired: its drops stay
	// appA's; wb's element grows.
	delete(apps, "wa")
	got = read(sp("wb", 2), overlay.VethDrops{Veth: "wx", Reason: overlay.GuardToCell, Packets: 2})
	want = map[appReason]uint64{{"appA", "spoofed"}: 3, {"appB", "spoofed"}: 2, {"(unregistered)", "to_cell"}: 2}
	check("wa expired")
	got = read(sp("wb", 1)) // restarted: 1 < 2
	want = map[appReason]uint64{{"appB", "spoofed"}: 3, {"(unregistered)", "to_cell"}: 2, {"appA", "spoofed"}: 3}
	check("wb restarted, wx expired")

	// Many apps: 20 named (appB and (unregistered) among them), the rest (other).
	var els []overlay.VethDrops
	for i := range 30 {
		v := fmt.Sprintf("w%d", i)
		apps[v] = fmt.Sprintf("app%d", i)
		els = append(els, sp(v, 1))
	}
	got = read(append(els, sp("wb", 1))...)
	named := 0
	for k := range got {
		if k.app != pairOther {
			named++
		}
	}
	if named > guardAppsTop+1 { // appA, appB, (unregistered) and 17 more; to_cell and spoofed rows of one app count once each
		t.Errorf("%d named series, want at most %d: %v", named, guardAppsTop+1, got)
	}
	if got[appReason{pairOther, "spoofed"}] != 30-(guardAppsTop-3) {
		t.Errorf("(other) spoofed = %d, want %d", got[appReason{pairOther, "spoofed"}], 30-(guardAppsTop-3))
	}
}
