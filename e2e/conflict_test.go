package e2e

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/overlay"
)

// preferredIndex is mesh/lease.go's preferredIndex for a cell that lost no
// pick: where a joining cell starts looking for a free /24 of the /16
// overlay (pool 255, index 0 reserved). The test checks that both cells
// got that subnet, so a drift from mesh shows as a failure, not a pass.
func preferredIndex(name string) int {
	h := fnv.New64a()
	h.Write([]byte(name))
	return 1 + int(h.Sum64()%255)
}

// collidingNames returns two names "cellN", a < b, with the same preferred
// index, not one of avoid.
func collidingNames(t *testing.T, avoid ...int) (a, b string, idx int) {
	t.Helper()
	first := map[int]string{}
	for i := 100; i < 10000; i++ {
		name := fmt.Sprintf("cell%d", i)
		p := preferredIndex(name)
		if slices.Contains(avoid, p) {
			continue
		}
		if o, ok := first[p]; ok {
			return o, name, p
		}
		first[p] = name
	}
	t.Fatal("no two names with the same preferred subnet")
	return "", "", 0
}

// conflictStatus is the part of `weft status --output json` about a lost
// subnet conflict.
type conflictStatus struct {
	Subnet               string `json:"subnet"`
	SubnetConflict       string `json:"subnet_conflict"`
	ConflictedContainers int    `json:"conflicted_containers"`
}

// TestSubnetConflict (issue 28): the underlay is split in two, a new cell
// joins each side and both pick the same /24 (names chosen to collide),
// each creates a container (same IP), then the underlay heals. The older
// lease wins everywhere whatever the names' order: the winner's container
// answers from the other cells' containers; the loser reports its
// container as conflicted and refuses new ones; once that container is
// removed the loser re-picks and renumbers in place (the same agent
// process), and a container there is reachable from the other cells.
func TestSubnetConflict(t *testing.T) {
	for _, tc := range []struct {
		name          string
		winnerSmaller bool // the winner's name sorts before the loser's
	}{
		{"winner-smaller-name", true},
		{"winner-larger-name", false},
	} {
		t.Run(tc.name, func(t *testing.T) { testSubnetConflict(t, tc.winnerSmaller) })
	}
}

func testSubnetConflict(t *testing.T, winnerSmaller bool) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin,
		AgentArgs: []string{"--metrics-addr", fmt.Sprintf(":%d", metricsPort)}})
	st2, err := l.Status(2)
	if err != nil {
		t.Fatal(err)
	}
	sub2 := netip.MustParsePrefix(st2.Subnet)
	small, large, idx := collidingNames(t, 1, int(sub2.Addr().As4()[2]))
	winner, loser := small, large
	if !winnerSmaller {
		winner, loser = large, small
	}
	contested := fmt.Sprintf("10.255.%d.0/24", idx)
	t.Logf("winner %s, loser %s, both prefer %s", winner, loser, contested)

	// Cells 3 (winner) and 4 (loser); the loser joins the other side.
	for _, name := range []string{winner, loser} {
		if _, err := l.AddCellWith(lab.CellOpts{Name: name, NoStart: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Partition(2, 4); err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			l.Heal()
		}
	}()
	// The winner picks first: its lease is the older.
	for _, i := range []int{3, 4} {
		if err := l.StartCell(i); err != nil {
			t.Fatal(err)
		}
		if st, err := l.Status(i); err != nil || st.Subnet != contested {
			t.Fatalf("cell %d: subnet %q (%v), want %s: names chosen to collide did not", i, st.Subnet, err, contested)
		}
	}

	wC, lC := l.Name("win"), l.Name("lose")
	ipW, err := l.CreateContainer(3, "appW", wC)
	if err != nil {
		t.Fatal(err)
	}
	ipL, err := l.CreateContainer(4, "appW", lC)
	if err != nil {
		t.Fatal(err)
	}
	if ipW != ipL {
		t.Logf("containers at %v and %v", ipW, ipL)
	}
	serveHTTP(t, wC, 8080)
	serveHTTP(t, lC, 8080)
	clients := []string{l.Name("cli1"), l.Name("cli2")}
	for i, c := range clients {
		if _, err := l.CreateContainer(i+1, "appC", c); err != nil {
			t.Fatal(err)
		}
	}

	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	healed = true
	names := []string{"c1", "c2", winner, loser}
	for i := 1; i <= 4; i++ {
		waitStatus(t, l, i, 30*time.Second, "every cell alive", func(st lab.Status) bool {
			for _, n := range names {
				if st.MemberState(n) != "alive" {
					return false
				}
			}
			return true
		})
	}
	weft(t, l, 1, "add-network-policy", "appC", "appW", "--protocol", "tcp", "--port", "8080")

	// Every cell reports the contested subnet for the winner only.
	for i := 1; i <= 4; i++ {
		waitStatus(t, l, i, 15*time.Second, "the contested subnet held by "+winner, func(st lab.Status) bool {
			for _, m := range st.Members {
				if m.Subnet == contested && m.Name != winner {
					return false
				}
			}
			return true
		})
	}
	// The loser knows it lost.
	var cs conflictStatus
	waitFor(t, 15*time.Second, "the loser reports the conflict", func() bool {
		st, err := l.Status(4)
		return err == nil && json.Unmarshal(st.Raw, &cs) == nil && cs.SubnetConflict == winner
	})
	if cs.Subnet != contested || cs.ConflictedContainers != 1 {
		t.Errorf("loser's status: %+v, want subnet %s and 1 conflicted container", cs, contested)
	}
	series := fmt.Sprintf(`weft_subnet_conflict{holder="%s",subnet="%s"}`, winner, contested)
	if m, body := scrape(t, l, 1, 4); m[series] != 1 {
		t.Errorf("loser's metrics: %s = %v, want 1:\n%s", series, m[series], body)
	}
	if m, _ := scrape(t, l, 1, 3); sum(m, "weft_subnet_conflict") != 0 {
		t.Errorf("the winner reports weft_subnet_conflict")
	}
	if st := containerStatus(t, l, 4); st[lC] != "conflict" {
		t.Errorf("loser's container list: %v, want %s conflict", st, lC)
	}
	if st := containerStatus(t, l, 3); st[wC] != "" {
		t.Errorf("winner's container list: %v, want %s without a status", st, wC)
	}
	if _, err := l.CreateContainer(4, "appW", l.Name("late")); err == nil || !strings.Contains(err.Error(), "lost its subnet") {
		t.Errorf("new container on the loser: %v, want refused (lost its subnet)", err)
	}

	// The winner's container answers from every other cell's container.
	for _, c := range clients {
		expectFrom(t, c, ipW, 8080, wC)
	}

	// The operator removes the conflicted container: the loser re-picks
	// and its agent rebuilds the data plane on the new subnet in place
	// (issue 27): the same process, weft0 with the new cell address and
	// the `iif lo` rule to the new subnet, and a new container there that
	// reaches and is reached from the other cells and resolves names.
	cell4, _ := l.Cell(4)
	pid := cell4.PID()
	if err := l.DeleteContainer(4, lC); err != nil {
		t.Fatal(err)
	}
	// Until its data plane is on the new subnet the loser refuses a new
	// container with a reason (503, refuseWhileRenumberingLocked): one
	// attached meanwhile would get an address nothing routes and keep the
	// cell from moving in place. Asked from the moment the old container
	// is gone, it answers "lost its subnet" (the old lease), then "moving
	// from subnet" while the re-pick settles (a few gossip rounds), then
	// gives an address in the new subnet.
	var refused []string
	var ip4 netip.Addr
	for deadline := time.Now().Add(30 * time.Second); ; {
		ip, err := l.CreateContainer(4, "appW", l.Name("srv4"))
		if err == nil {
			ip4 = ip
			break
		}
		refused = append(refused, err.Error())
		if time.Now().After(deadline) {
			t.Fatalf("no container on the loser within 30 s: %d refusals, last %q", len(refused), refused[len(refused)-1])
		}
		time.Sleep(20 * time.Millisecond)
	}
	moving := 0
	for _, r := range refused {
		if strings.Contains(r, "is moving from subnet "+contested) {
			moving++
		} else if !strings.Contains(r, "lost its subnet") {
			t.Errorf("new container on the loser refused for another reason: %s", r)
		}
	}
	t.Logf("new container on the loser: %d refusals while it moved, %d in all", moving, len(refused))
	if moving == 0 {
		t.Errorf("no new container refused while the loser moved to a new subnet (%d refusals: %q)", len(refused), refused)
	}
	var st4 lab.Status
	took := waitStatus(t, l, 4, 15*time.Second, "the loser holds a new subnet", func(st lab.Status) bool {
		st4 = st
		return st.Subnet != "" && st.Subnet != contested
	})
	renumbered := netip.MustParsePrefix(st4.Subnet)
	t.Logf("loser renumbered to %s after %v", renumbered, took)
	waitFor(t, 15*time.Second, "the loser's data plane on "+renumbered.String(), func() bool {
		addrs, rule, err := cellAddrsAndRule(cell4, renumbered)
		return err == nil && slices.Equal(addrs, []netip.Addr{overlay.CellAddr(renumbered)}) && rule
	})
	if got := cell4.PID(); got != pid {
		t.Fatalf("loser's agent: pid %d, was %d: it renumbered by restarting, want in place", got, pid)
	}
	if raw, err := os.ReadFile(cell4.LogPath); err == nil {
		t.Logf("loser's log:\n%s", grep(string(raw), "data plane rebuilt"))
	}
	if !renumbered.Contains(ip4) {
		t.Fatalf("new container on the loser at %v, outside its subnet %v", ip4, renumbered)
	}
	serveHTTP(t, l.Name("srv4"), 8080)
	cli4 := l.Name("cli4")
	if _, err := l.CreateContainer(4, "appC", cli4); err != nil {
		t.Fatal(err)
	}
	for _, c := range append(clients, cli4) {
		expectFrom(t, c, ipW, 8080, wC)
	}
	for _, c := range clients {
		expectFrom(t, c, ip4, 8080, l.Name("srv4"))
	}
	waitResolve(t, cli4, "appW.apps.internal.", ipW.String(), ip4.String())
	// The rebuilt data plane is kept as the first was: cell 1's peer
	// removed behind the loser's back (`wg set IFACE peer KEY remove`
	// over the UAPI socket) comes back and carries traffic again.
	removePeerAndWait(t, l, 4, 1)
	expectFrom(t, clients[0], ip4, 8080, l.Name("srv4"))
	for i := 1; i <= 3; i++ {
		waitStatus(t, l, i, 15*time.Second, "the loser's new subnet", func(st lab.Status) bool {
			for _, m := range st.Members {
				if m.Name == loser {
					return m.Subnet == renumbered.String()
				}
			}
			return false
		})
	}

	// The restart path still works: restarted, the loser takes back the
	// new lease and serves its containers.
	if err := l.StartCell(4); err != nil {
		t.Fatal(err)
	}
	if st, err := l.Status(4); err != nil || st.Subnet != renumbered.String() {
		t.Fatalf("restarted loser: subnet %q (%v), want %s", st.Subnet, err, renumbered)
	}
	for _, c := range clients {
		expectFrom(t, c, ip4, 8080, l.Name("srv4"))
	}
}

// removePeerAndWait removes cell peer's WireGuard peer from cell i's
// device as `wg set IFACE peer KEY remove` does (UAPI) and waits until
// drift repair has put it back with its allowed IPs.
func removePeerAndWait(t *testing.T, l *lab.Lab, i, peer int) {
	t.Helper()
	c, _ := l.Cell(i)
	st, err := l.Status(peer)
	if err != nil {
		t.Fatal(err)
	}
	sti, err := l.Status(i)
	if err != nil {
		t.Fatal(err)
	}
	var key wgtypes.Key
	for _, p := range sti.Peers {
		if k, err := wgtypes.ParseKey(p.PublicKey); err == nil && slices.Contains(p.AllowedIPs, st.Subnet) {
			key = k
		}
	}
	if key == (wgtypes.Key{}) {
		t.Fatalf("cell %d has no peer for cell %d's subnet %s: %s", i, peer, st.Subnet, sti.Raw)
	}
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	if err := wg.ConfigureDevice(c.Interface, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}}); err != nil {
		t.Fatalf("remove cell %d's peer %v on cell %d: %v", peer, key, i, err)
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("cell %d's peer back on cell %d", peer, i), func() bool {
		dev, err := wg.Device(c.Interface)
		if err != nil {
			return false
		}
		for _, p := range dev.Peers {
			if p.PublicKey == key && len(p.AllowedIPs) == 1 && p.AllowedIPs[0].String() == st.Subnet {
				return true
			}
		}
		return false
	})
}

// cellAddrsAndRule returns the IPv4 addresses on cell c's TUN and whether
// the `iif lo to SUBNET lookup DELIVERY` rule is there for subnet.
func cellAddrsAndRule(c *lab.Cell, subnet netip.Prefix) (addrs []netip.Addr, rule bool, err error) {
	err = lab.InNetns(c.Netns, func() error {
		link, err := netlink.LinkByName(c.Interface)
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, a := range as {
			ip, _ := netip.AddrFromSlice(a.IP)
			if ip = ip.Unmap(); !ip.IsLinkLocalUnicast() { // the DNS address 169.254.0.2 aside
				addrs = append(addrs, ip)
			}
		}
		rules, err := netlink.RuleList(unix.AF_INET)
		for _, r := range rules {
			rule = rule || (r.IifName == "lo" && r.Dst != nil && r.Dst.String() == subnet.String() &&
				r.Table == overlay.DefaultConfig().DeliveryTable)
		}
		return err
	})
	return addrs, rule, err
}

// containerStatus is `weft container list` of a cell: name -> status.
func containerStatus(t *testing.T, l *lab.Lab, cell int) map[string]string {
	t.Helper()
	var list []struct{ Name, Status string }
	if err := json.Unmarshal([]byte(weft(t, l, cell, "container", "list", "--output", "json")), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, c := range list {
		out[c.Name] = c.Status
	}
	return out
}

// expectFrom polls until GET http://ip:port/ from ns is answered by the
// server in namespace server, then checks that 5 more requests are too.
func expectFrom(t *testing.T, ns string, ip netip.Addr, port int, server string) {
	t.Helper()
	want := "hello from " + server + "\n"
	var code int
	var body string
	var err error
	waitFor(t, 15*time.Second, fmt.Sprintf("%s -> %v:%d answered by %s", ns, ip, port, server), func() bool {
		code, body, err = lab.HTTPGetIn(ns, url(ip, port), 2*time.Second)
		return err == nil && code == http.StatusOK && body == want
	})
	for range 5 {
		code, body, err = lab.HTTPGetIn(ns, url(ip, port), 2*time.Second)
		if err != nil || code != http.StatusOK || body != want {
			t.Fatalf("%s -> %v:%d: %d %q %v, want %q", ns, ip, port, code, body, err, want)
		}
	}
}
