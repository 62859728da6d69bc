package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/overlay"
)

// TestDriftRepair (issue 25 item 5): with appA (cell 1) -> appB (cell 2)
// allowed and working, each piece of cell 2's data plane is changed behind
// its agent's back as an operator would: the WireGuard peer of cell 1
// removed through the UAPI socket (what `wg set IFACE peer KEY remove`
// does), the overlay route, appB's delivery route, the policy-routing
// rule, the cell's address on the TUN and the gateway address on appB's
// host veth deleted (`ip route|rule|addr del`), the guard's nftables table
// deleted. Each is back within 10 s, counted in weft_drift_repaired_total
// under its kind, and appA reaches appB again.
func TestDriftRepair(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin,
		AgentArgs: []string{"--metrics-addr", fmt.Sprintf(":%d", metricsPort)}})
	c2, _ := l.Cell(2)
	ctA, ctB := l.Name("a"), l.Name("b")
	createContainer(t, l, 1, "appA", ctA)
	ipB := createContainer(t, l, 2, "appB", ctB)
	serveHTTP(t, ctB, 8080)
	weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	expectHTTP(t, ctA, ipB, 8080)

	st, err := l.Status(2)
	if err != nil || len(st.Peers) != 1 {
		t.Fatalf("status of cell 2: %+v, %v; want one peer", st, err)
	}
	peer, err := wgtypes.ParseKey(st.Peers[0].PublicKey)
	if err != nil {
		t.Fatalf("cell 2's peer key %q: %v", st.Peers[0].PublicKey, err)
	}
	subnet := netip.MustParsePrefix(st.Subnet)
	cellAddr := overlay.CellAddr(subnet)
	veth := attach.HostVethName(ctB)
	table := overlay.DefaultConfig().DeliveryTable
	prio := overlay.DefaultConfig().RulePriority
	overlayCIDR := overlay.DefaultConfig().OverlayCIDR

	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	hasPeer := func() (bool, error) {
		dev, err := wg.Device(c2.Interface)
		if err != nil {
			return false, err
		}
		for _, p := range dev.Peers {
			if p.PublicKey == peer && len(p.AllowedIPs) == 1 {
				return true, nil
			}
		}
		return false, nil
	}
	// In cell 2's namespace.
	hasRoute := func(dst netip.Prefix, dev string, table int) func() (bool, error) {
		return func() (bool, error) {
			link, err := netlink.LinkByName(dev)
			if err != nil {
				return false, err
			}
			routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
			for _, r := range routes {
				if r.Dst != nil && r.Dst.String() == dst.String() && r.LinkIndex == link.Attrs().Index {
					return true, nil
				}
			}
			return false, err
		}
	}
	hasAddr := func(dev string, a netip.Addr) func() (bool, error) {
		return func() (bool, error) {
			link, err := netlink.LinkByName(dev)
			if err != nil {
				return false, err
			}
			addrs, err := netlink.AddrList(link, unix.AF_INET)
			for _, x := range addrs {
				if ip, _ := netip.AddrFromSlice(x.IP); ip.Unmap() == a {
					return true, nil
				}
			}
			return false, err
		}
	}
	hasRule := func() (bool, error) {
		rules, err := netlink.RuleList(unix.AF_INET)
		for _, r := range rules {
			if r.Priority == prio && r.Table == table && r.IifName == c2.Interface {
				return true, nil
			}
		}
		return false, err
	}
	guardTable := &nftables.Table{Family: nftables.TableFamilyINet, Name: overlay.GuardTable}
	hasTable := func() (bool, error) {
		c, err := nftables.New()
		if err != nil {
			return false, err
		}
		set, err := c.GetSetByName(guardTable, "containers")
		if err != nil {
			return false, nil
		}
		els, err := c.GetSetElements(set)
		return len(els) == 1, err
	}
	inCell := func(fn func() (bool, error)) func() (bool, error) {
		return func() (ok bool, err error) {
			err = lab.InNetns(c2.Netns, func() error {
				ok, err = fn()
				return err
			})
			return ok, err
		}
	}
	ipCmd := func(args ...string) func() error {
		return func() error {
			out, err := lab.ExecIn(c2.Netns, "ip", args...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
			return nil
		}
	}

	for _, c := range []struct {
		name, kind string
		change     func() error
		restored   func() (bool, error)
	}{
		{"wg set peer remove", overlay.DriftPeer, func() error {
			return wg.ConfigureDevice(c2.Interface, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: peer, Remove: true}}})
		}, hasPeer},
		{"ip route del overlay", overlay.DriftRoute,
			ipCmd("route", "del", overlayCIDR.String(), "dev", c2.Interface),
			inCell(hasRoute(overlayCIDR, c2.Interface, unix.RT_TABLE_MAIN))},
		{"ip route del delivery", overlay.DriftRoute,
			ipCmd("route", "del", ipB.String()+"/32", "table", fmt.Sprint(table)),
			inCell(hasRoute(netip.PrefixFrom(ipB, 32), veth, table))},
		{"ip rule del", overlay.DriftRule,
			ipCmd("rule", "del", "pref", fmt.Sprint(prio)),
			inCell(hasRule)},
		{"ip addr del tun", overlay.DriftAddress,
			ipCmd("addr", "del", cellAddr.String()+"/32", "dev", c2.Interface),
			inCell(hasAddr(c2.Interface, cellAddr))},
		{"ip addr del veth", overlay.DriftAddress,
			ipCmd("addr", "del", attach.Gateway.String()+"/32", "dev", veth),
			inCell(hasAddr(veth, attach.Gateway))},
		{"nft delete table", overlay.DriftNFTables, func() error {
			// What `nft delete table inet weft` sends.
			return lab.InNetns(c2.Netns, func() error {
				c, err := nftables.New()
				if err != nil {
					return err
				}
				c.DelTable(guardTable)
				return c.Flush()
			})
		}, inCell(hasTable)},
	} {
		t.Run(c.name, func(t *testing.T) {
			series := fmt.Sprintf("weft_drift_repaired_total{kind=%q}", c.kind)
			before, _ := scrape(t, l, 1, 2)
			if err := c.change(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			var last error
			waitFor(t, 10*time.Second, c.name+" repaired and counted", func() bool {
				ok, err := c.restored()
				last = err
				if !ok {
					return false
				}
				now, _ := scrape(t, l, 1, 2)
				return now[series] > before[series]
			})
			took := time.Since(start)
			expectHTTP(t, ctA, ipB, 8080)
			after, _ := scrape(t, l, 1, 2)
			t.Logf("%s: repaired in %v (%s %v -> %v; last check error %v); appA reaches appB",
				c.name, took.Round(time.Millisecond), series, before[series], after[series], last)
		})
	}
	raw, err := os.ReadFile(c2.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	log := string(raw)
	if n := strings.Count(log, `drift repaired`); n < 7 {
		t.Errorf("cell 2 logged %d \"drift repaired\" lines, want at least 7:\n%s", n, grep(log, "drift"))
	}
	t.Logf("cell 2's drift log:\n%s", grep(log, "drift repaired"))
}
