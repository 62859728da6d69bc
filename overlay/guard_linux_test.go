package overlay

import (
	"net/netip"
	"os/exec"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/internal/lab"
)

// inScratchNetns runs fn in a new network namespace, removed afterwards.
func inScratchNetns(t testing.TB, fn func() error) {
	t.Helper()
	lab.RequireRoot(t)
	ns := lab.RunPrefix() + "-guard"
	exec.Command("ip", "netns", "del", ns).Run() // a leftover of this pid
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	if err := lab.InNetns(ns, fn); err != nil {
		t.Fatal(err)
	}
}

func TestGuardSyncAndRepair(t *testing.T) {
	inScratchNetns(t, func() error {
		g := newGuard("weftg0", netip.MustParseAddr("169.254.0.2"), 51820, netip.MustParsePrefix("10.255.0.0/16"))
		if err := g.install(); err != nil {
			t.Fatalf("install: %v", err)
		}
		want := []GuardEntry{
			{Veth: attach.HostVethName("b"), IP: netip.MustParseAddr("10.255.1.3")},
			{Veth: attach.HostVethName("a"), IP: netip.MustParseAddr("10.255.1.2")},
		}
		if changed, err := g.Sync(want); err != nil || !changed {
			t.Fatalf("first Sync: changed %v, err %v; want a change", changed, err)
		}
		if changed, err := g.Sync(slices.Clone(want)); err != nil || changed {
			t.Fatalf("same Sync again: changed %v, err %v; want no change", changed, err)
		}
		have, err := g.Entries()
		if err != nil || !slices.Equal(have, sortEntries(want)) {
			t.Fatalf("kernel holds %v (err %v), want %v", have, err, sortEntries(want))
		}

		// A restarted agent keeps the bindings it finds.
		g2 := newGuard("weftg0", netip.MustParseAddr("169.254.0.2"), 51820, netip.MustParsePrefix("10.255.0.0/16"))
		if err := g2.install(); err != nil {
			t.Fatalf("second install: %v", err)
		}
		if have, _ := g2.Entries(); !slices.Equal(have, sortEntries(want)) {
			t.Fatalf("after re-install the kernel holds %v, want %v", have, sortEntries(want))
		}

		// An operator's `nft flush ruleset`: the next Sync builds it again.
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		c.FlushRuleset()
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := g2.Entries(); err == nil {
			t.Fatal("table still there after flush ruleset")
		}
		want = want[:1]
		if changed, err := g2.Sync(want); err != nil || !changed {
			t.Fatalf("Sync after flush: changed %v, err %v; want a change", changed, err)
		}
		if have, _ := g2.Entries(); !slices.Equal(have, want) {
			t.Fatalf("after repair the kernel holds %v, want %v", have, want)
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ch := range chains {
			if ch.Table.Name == GuardTable {
				names = append(names, ch.Name)
			}
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"egress", "egress_accept", "forward", "from_container", "ingress", "ingress_host", "input", "output", "output_ingress", "postrouting", "prerouting", "route_mark"}) {
			t.Fatalf("chains after repair: %v", names)
		}
		if cnt, err := g2.Counters(); err != nil || cnt != (GuardCounters{}) {
			t.Fatalf("counters: %+v, %v; want zeros", cnt, err)
		}
		return nil
	})
}

// TestGuardGroupsVeths: the rules tell containers' veths by their
// interface group. Sync gives it to the veths it binds, and install to
// the veths of the bindings it keeps (an agent upgraded from one that
// matched names), so that no container is cut off.
func TestGuardGroupsVeths(t *testing.T) {
	inScratchNetns(t, func() error {
		veth := func(id string) string {
			name := attach.HostVethName(id)
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "p" + name[2:]}); err != nil {
				t.Fatalf("veth %s: %v", name, err)
			}
			return name
		}
		group := func(name string) uint32 {
			l, err := netlink.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			return l.Attrs().Group
		}
		a, b := veth("a"), veth("b")
		g := newGuard("weftg0", netip.MustParseAddr("169.254.0.2"), 51820, netip.MustParsePrefix("10.255.0.0/16"))
		if err := g.install(); err != nil {
			t.Fatalf("install: %v", err)
		}
		want := []GuardEntry{{Veth: a, IP: netip.MustParseAddr("10.255.1.2")}}
		if _, err := g.Sync(want); err != nil {
			t.Fatal(err)
		}
		if got := group(a); got != attach.HostVethGroup {
			t.Errorf("%s after Sync: group %#x, want %#x", a, got, uint32(attach.HostVethGroup))
		}
		if got := group(b); got != 0 {
			t.Errorf("%s, not bound: group %#x, want 0", b, got)
		}
		// An older agent's veth: bound, without the group.
		l, _ := netlink.LinkByName(a)
		if err := netlink.LinkSetGroup(l, 0); err != nil {
			t.Fatal(err)
		}
		g2 := newGuard("weftg0", netip.MustParseAddr("169.254.0.2"), 51820, netip.MustParsePrefix("10.255.0.0/16"))
		if err := g2.install(); err != nil {
			t.Fatalf("second install: %v", err)
		}
		if got := group(a); got != attach.HostVethGroup {
			t.Errorf("%s after a new agent's install: group %#x, want %#x", a, got, uint32(attach.HostVethGroup))
		}
		return nil
	})
}
