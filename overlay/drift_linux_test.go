package overlay

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/internal/lab"
)

// TestKernelDriftRepaired builds the overlay's kernel state in a scratch
// network namespace (a veth for weft0, a container's host veth, the
// guard's table), runs the reconciler there with a periodic compare of one
// hour, so that only kernel notifications can wake it, and changes each
// piece behind its back: every change is undone within the deadline and
// counted under its kind. Then stop leaves no goroutine of it behind.
func TestKernelDriftRepaired(t *testing.T) {
	lab.RequireRoot(t)
	ns := lab.RunPrefix() + "-drift"
	exec.Command("ip", "netns", "del", ns).Run() // a leftover of this pid
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	in := func(what string, fn func() error) {
		t.Helper()
		if err := lab.InNetns(ns, fn); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	cfg := DefaultConfig()
	cfg.Interface = "wd0"
	cfg.LocalSubnet = netip.MustParsePrefix("10.255.1.0/24")
	cfg.DriftInterval = time.Hour
	veth := attach.HostVethName("drift-c1")
	ctrIP := netip.MustParseAddr("10.255.1.2")
	entries := []GuardEntry{{Veth: veth, IP: ctrIP}}
	g := newGuard(cfg.Interface, netip.Addr{}, cfg.ListenPort, cfg.OverlayCIDR)
	var tunIdx, vethIdx int
	in("set up", func() error {
		// A veth for weft0 (no dummy module in every kernel).
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: cfg.Interface}, PeerName: "wd0p"}); err != nil {
			return err
		}
		tun, err := netlink.LinkByName(cfg.Interface)
		if err != nil {
			return err
		}
		tunIdx = tun.Attrs().Index
		if err := netlink.AddrReplace(tun, cellAddrOf(cfg)); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(tun); err != nil {
			return err
		}
		if err := netlink.RouteReplace(overlayRoute(cfg, tunIdx)); err != nil {
			return err
		}
		for _, r := range rules(cfg) {
			if err := netlink.RuleAdd(r); err != nil {
				return err
			}
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: "wdpeer"}); err != nil {
			return err
		}
		host, err := netlink.LinkByName(veth)
		if err != nil {
			return err
		}
		vethIdx = host.Attrs().Index
		peer, err := netlink.LinkByName("wdpeer")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(host, attach.GatewayAddr()); err != nil {
			return err
		}
		for _, l := range []netlink.Link{host, peer} {
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		if err := netlink.RouteReplace(attach.ContainerRoute(vethIdx, ctrIP, cfg.DeliveryTable)); err != nil {
			return err
		}
		if err := g.install(); err != nil {
			return err
		}
		_, err = g.Sync(entries)
		return err
	})

	r := newReconciler(cfg, testLogger(t), g, nil)
	r.setContainers(entries)
	go lab.InNetns(ns, func() error { r.run(); return nil })
	stopped := false
	defer func() {
		if !stopped {
			r.stop()
		}
	}()

	link := func(name string) netlink.Link {
		l, err := netlink.LinkByName(name)
		if err != nil {
			panic(err)
		}
		return l
	}
	hasRoute := func(table, idx int, dst netip.Prefix) func() bool {
		return func() bool {
			routes, _ := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
			for _, r := range routes {
				if r.Dst != nil && r.Dst.String() == dst.String() && r.LinkIndex == idx {
					return true
				}
			}
			return false
		}
	}
	hasRule := func(prio int) func() bool {
		return func() bool {
			rs, _ := netlink.RuleList(unix.AF_INET)
			for _, r := range rs {
				if r.Priority == prio && r.Table == cfg.DeliveryTable {
					return true
				}
			}
			return false
		}
	}
	hasAddr := func(name string, a netip.Addr) func() bool {
		return func() bool {
			addrs, _ := netlink.AddrList(link(name), unix.AF_INET)
			for _, x := range addrs {
				if ip, _ := netip.AddrFromSlice(x.IP); ip.Unmap() == a {
					return true
				}
			}
			return false
		}
	}
	isUp := func(name string) func() bool {
		return func() bool { return link(name).Attrs().Flags&net.FlagUp != 0 }
	}
	nft := func(fn func(c *nftables.Conn) error) func() error {
		return func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			if err := fn(c); err != nil {
				return err
			}
			return c.Flush()
		}
	}
	guardWhole := func() bool {
		have, err := g.Entries()
		if err != nil || len(have) != 1 || have[0] != entries[0] {
			return false
		}
		c, err := nftables.New()
		if err != nil {
			return false
		}
		ch, err := c.ListChain(g.table, "prerouting")
		if err != nil {
			return false
		}
		rules, err := c.GetRules(g.table, ch)
		return err == nil && len(rules) > 0
	}
	overlayDst := cfg.OverlayCIDR
	ctrDst := netip.PrefixFrom(ctrIP, 32)

	for _, c := range []struct {
		name, kind string
		change     func() error
		restored   []func() bool
	}{
		{"ip route del OVERLAY dev wd0", DriftRoute,
			func() error { return netlink.RouteDel(overlayRoute(cfg, tunIdx)) },
			[]func() bool{hasRoute(unix.RT_TABLE_MAIN, tunIdx, overlayDst)}},
		{"ip route del CONTAINER/32 table DELIVERY", DriftRoute,
			func() error { return netlink.RouteDel(attach.ContainerRoute(vethIdx, ctrIP, cfg.DeliveryTable)) },
			[]func() bool{hasRoute(cfg.DeliveryTable, vethIdx, ctrDst)}},
		{"ip rule del iif wd0", DriftRule,
			func() error { return netlink.RuleDel(rules(cfg)[0]) },
			[]func() bool{hasRule(cfg.RulePriority)}},
		{"ip rule del fwmark", DriftRule,
			func() error { return netlink.RuleDel(rules(cfg)[2]) },
			[]func() bool{hasRule(cfg.RulePriority + 2)}},
		{"ip addr del CELL dev wd0", DriftAddress,
			func() error { return netlink.AddrDel(link(cfg.Interface), cellAddrOf(cfg)) },
			[]func() bool{hasAddr(cfg.Interface, CellAddr(cfg.LocalSubnet))}},
		{"ip addr del GATEWAY dev VETH", DriftAddress,
			func() error { return netlink.AddrDel(link(veth), attach.GatewayAddr()) },
			[]func() bool{hasAddr(veth, attach.Gateway)}},
		{"ip link set wd0 down", DriftLink,
			func() error { return netlink.LinkSetDown(link(cfg.Interface)) },
			[]func() bool{isUp(cfg.Interface), hasRoute(unix.RT_TABLE_MAIN, tunIdx, overlayDst)}},
		{"nft delete table inet weft", DriftNFTables,
			nft(func(c *nftables.Conn) error { c.DelTable(g.table); return nil }),
			[]func() bool{guardWhole}},
		{"nft flush chain inet weft prerouting", DriftNFTables,
			nft(func(c *nftables.Conn) error {
				c.FlushChain(&nftables.Chain{Table: g.table, Name: "prerouting"})
				return nil
			}),
			[]func() bool{guardWhole}},
		{"nft delete element inet weft containers", DriftNFTables,
			nft(func(c *nftables.Conn) error { return c.SetDeleteElements(g.set(), g.elements(entries)) }),
			[]func() bool{guardWhole}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := r.counts()[c.kind]
			in(c.name, c.change)
			start := time.Now()
			deadline := start.Add(5 * time.Second)
			for {
				ok := r.counts()[c.kind] > before
				in("check "+c.name, func() error {
					for _, f := range c.restored {
						ok = ok && f()
					}
					return nil
				})
				if ok {
					t.Logf("repaired in %v", time.Since(start).Round(time.Millisecond))
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("not repaired (and counted as %s) within 5 s; repairs %v", c.kind, r.counts())
				}
				time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
			}
		})
	}

	r.stop()
	stopped = true
	waitNoGoroutine(t, "overlay.(*reconciler)")
}

// waitNoGoroutine fails unless, within 2 s, no goroutine has a frame whose
// function name contains fn.
func waitNoGoroutine(t *testing.T, fn string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var left []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, fn) {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(fmt.Sprintf("%d goroutines of %s left after stop:\n", len(left), fn) + strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}
