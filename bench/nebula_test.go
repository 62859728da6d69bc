package bench

// Rung n of the ladder (issue 21): nebula between two containers on two
// cells, the hop of weft's rungs c and d. Each cell is a namespace with
// nebula (firewall on, naming the ladder's ports, with conntrack; TUN
// and UDP offloads on, nebula's defaults) and a container namespace behind
// a veth; the containers' subnets are unsafe networks of the cells'
// certificates, routed over nebula with unsafe_routes:
//
//	container A --veth-- cell A --nebula, veth underlay-- cell B --veth-- container B
//	10.255.247.2  .247.1 |10.255.246.1    198.18.0.211/.212    10.255.246.2| .248.1  10.255.248.2
//
// It runs with -ladder.nebula DIR, DIR holding nebula and nebula-cert
// built from github.com/slackhq/nebula at or after commit edc3c5e0 (its
// TUN offloads); docs/performance.md says how.

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/lab"
)

var (
	ladderNebula         = flag.String("ladder.nebula", "", "directory with nebula and nebula-cert built from github.com/slackhq/nebula at or after edc3c5e0, for rung n (without it rung n is skipped)")
	ladderNebulaRoutines = flag.Int("ladder.nebularoutines", 1, "nebula's routines (TUN queues and UDP sockets) in rung n; 1 is nebula's default")
)

// nebulaCell is one side of rung n.
type nebulaCell struct {
	name       string       // certificate name, namespace suffix
	underlay   netip.Prefix // cell's address on the underlay veth
	vpn        netip.Prefix // nebula address
	ctNet      netip.Prefix // container subnet (an unsafe network of its certificate)
	gw, ctAddr netip.Addr   // cell's and container's address in ctNet
}

var nebulaCells = [2]nebulaCell{
	{"na", netip.MustParsePrefix("198.18.0.211/24"), netip.MustParsePrefix("10.255.246.1/24"),
		netip.MustParsePrefix("10.255.247.0/24"), netip.MustParseAddr("10.255.247.1"), netip.MustParseAddr("10.255.247.2")},
	{"nb", netip.MustParsePrefix("198.18.0.212/24"), netip.MustParsePrefix("10.255.246.2/24"),
		netip.MustParsePrefix("10.255.248.0/24"), netip.MustParseAddr("10.255.248.1"), netip.MustParseAddr("10.255.248.2")},
}

// nebulaRung is rung n as started: the client and server container
// namespaces, the server container's address and the nebula processes.
type nebulaRung struct {
	ctA, ctB string
	ipB      netip.Addr
	pids     []int
}

// startNebula builds rung n's namespaces, starts nebula from dir on both
// cells and waits for the tunnel. Everything is removed when b ends.
// cipher is nebula's "cipher" setting: aes (its default) or chachapoly.
func startNebula(b *testing.B, dir, cipher string) nebulaRung {
	nebula, cert := filepath.Join(dir, "nebula"), filepath.Join(dir, "nebula-cert")
	for _, bin := range []string{nebula, cert} {
		if _, err := os.Stat(bin); err != nil {
			b.Fatalf("-ladder.nebula: %v", err)
		}
	}
	if out, err := exec.Command(nebula, "-version").CombinedOutput(); err == nil {
		b.Logf("nebula %s", strings.TrimSpace(string(out)))
	}
	run := lab.RunPrefix()
	cellNs := func(c nebulaCell) string { return run + "-" + c.name }
	ctNs := func(c nebulaCell) string { return run + "-" + c.name + "ct" }
	for _, c := range nebulaCells {
		cleanup, err := nebulaCellNetns(cellNs(c), ctNs(c), c)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(cleanup)
	}
	a, z := nebulaCells[0], nebulaCells[1]
	if err := underlayVeth(cellNs(a), cellNs(z), a.underlay, z.underlay); err != nil {
		b.Fatal(err)
	}

	tmp := b.TempDir()
	certCmd := func(args ...string) {
		if out, err := exec.Command(cert, args...).CombinedOutput(); err != nil {
			b.Fatalf("nebula-cert %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ca, caKey := filepath.Join(tmp, "ca.crt"), filepath.Join(tmp, "ca.key")
	certCmd("ca", "-name", "weft-ladder", "-out-crt", ca, "-out-key", caKey)
	var logs []string
	var pids []int
	for i, c := range nebulaCells {
		peer := nebulaCells[1-i]
		crt, key := filepath.Join(tmp, c.name+".crt"), filepath.Join(tmp, c.name+".key")
		certCmd("sign", "-ca-crt", ca, "-ca-key", caKey, "-name", c.name,
			"-networks", c.vpn.String(), "-unsafe-networks", c.ctNet.String(), "-out-crt", crt, "-out-key", key)
		conf := filepath.Join(tmp, c.name+".yml")
		if err := os.WriteFile(conf, []byte(nebulaConfig(c, peer, ca, crt, key, cipher)), 0o644); err != nil {
			b.Fatal(err)
		}
		logPath := filepath.Join(tmp, c.name+".log")
		logf, err := os.Create(logPath)
		if err != nil {
			b.Fatal(err)
		}
		logs = append(logs, logPath)
		cmd := lab.ExecIn(cellNs(c), nebula, "-config", conf)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		pids = append(pids, cmd.Process.Pid) // nsenter execs nebula: the same process
		// Registered after the namespaces' removal, so it runs before it.
		b.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			logf.Close()
		})
	}
	n := nebulaRung{ctA: ctNs(a), ctB: ctNs(z), ipB: z.ctAddr, pids: pids}
	waitNebula(b, n.ctA, n.ctB, netip.AddrPortFrom(n.ipB, rrPort), logs)
	return n
}

// nebulaConfig is cell c's nebula configuration, peered with peer: no
// lighthouse, MTU 1420 as weft's, the peer's container subnet routed over
// nebula, and a firewall whose outbound and inbound rules let the ladder's
// TCP and UDP ports through between the two container subnets, and
// nothing else but answers (conntrack).
func nebulaConfig(c, peer nebulaCell, ca, crt, key, cipher string) string {
	rules := func(remote, local netip.Prefix) string {
		var sb strings.Builder
		for _, r := range []struct{ proto, ports string }{
			{"tcp", fmt.Sprintf("%d-%d", tcpPort, rrPort+2)},
			{"udp", fmt.Sprintf("%d-%d", udpPort, udpPort+2)},
		} {
			fmt.Fprintf(&sb, "    - {port: %s, proto: %s, cidr: %s, local_cidr: %s}\n", r.ports, r.proto, remote, local)
		}
		return sb.String()
	}
	return fmt.Sprintf(`pki: {ca: %s, cert: %s, key: %s}
static_host_map: {"%s": ["%s:4242"]}
lighthouse: {am_lighthouse: false, hosts: []}
listen: {host: 0.0.0.0, port: 4242}
punchy: {punch: false}
routines: %d
cipher: %s
tun:
  dev: nebula1
  mtu: 1420
  use_offloads: true
  unsafe_routes:
    - {route: %s, via: %s}
logging: {level: info, format: text}
firewall:
  outbound_action: drop
  inbound_action: drop
  outbound:
%s  inbound:
%s`, ca, crt, key, peer.vpn.Addr(), peer.underlay.Addr(), *ladderNebulaRoutines, cipher,
		peer.ctNet, peer.vpn.Addr(),
		rules(peer.ctNet, c.ctNet), rules(peer.ctNet, c.ctNet))
}

// waitNebula waits (at most 20 s) until a TCP connection from container
// namespace client reaches a listener at dst in server through nebula,
// and checks that nebula's firewall drops one to a port outside its rules
// and that both nebulas run with TUN offloads.
func waitNebula(b *testing.B, client, server string, dst netip.AddrPort, logs []string) {
	stop := echoServer(b, server, dst.Port())
	defer stop()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := lab.DialIn(client, "tcp", dst.String(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("no TCP connection through nebula to %v after 20 s: %v\n%s", dst, err, tails(logs))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The firewall is on: a port outside its rules is dropped.
	closed := netip.AddrPortFrom(dst.Addr(), rrPort+10)
	stopClosed := echoServer(b, server, closed.Port())
	defer stopClosed()
	if c, err := lab.DialIn(client, "tcp", closed.String(), 500*time.Millisecond); err == nil {
		c.Close()
		b.Fatalf("nebula's firewall let a connection to %v through", closed)
	}
	for _, p := range logs {
		data, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		var status []string
		for l := range strings.Lines(string(data)) {
			if strings.Contains(l, "TUN offload status") || strings.Contains(l, "udp: GRO") {
				status = append(status, strings.TrimSpace(l))
			}
		}
		if len(status) == 0 || !strings.Contains(strings.Join(status, " "), "tso=true") {
			b.Fatalf("nebula %s: TUN offloads not on (needs a nebula at or after edc3c5e0):\n%s", filepath.Base(p), tails(logs))
		}
		b.Logf("nebula %s: %s", filepath.Base(p), strings.Join(status, "; "))
	}
}

// tails is the last lines of each log.
func tails(logs []string) string {
	var sb strings.Builder
	for _, p := range logs {
		data, _ := os.ReadFile(p)
		lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
		fmt.Fprintf(&sb, "%s:\n%s\n", filepath.Base(p), bytes.Join(lines[max(0, len(lines)-15):], []byte("\n")))
	}
	return sb.String()
}

// nebulaCellNetns makes cell c's namespace cell and its container's, ct,
// joined by a veth with the overlay MTU (as weft's), ct's default route
// through cell, and IP forwarding on in cell. cleanup deletes both.
func nebulaCellNetns(cell, ct string, c nebulaCell) (cleanup func(), err error) {
	cleanup, err = lab.NewVethPair(ct, cell,
		netip.PrefixFrom(c.ctAddr, c.ctNet.Bits()), netip.PrefixFrom(c.gw, c.ctNet.Bits()))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	setMTU := func(h *netlink.Handle) error { // the namespace's only veth so far
		links, err := h.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Type() == "veth" {
				if err := h.LinkSetMTU(l, 1420); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err = withNetlink(ct, func(h *netlink.Handle) error {
		if err := setMTU(h); err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{Gw: c.gw.AsSlice()})
	})
	if err == nil {
		err = withNetlink(cell, setMTU)
	}
	if err == nil {
		err = lab.InNetns(cell, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
		})
	}
	return cleanup, err
}

// underlayVeth joins the namespaces cellA and cellB by a veth "under",
// addressed ipA and ipB.
func underlayVeth(cellA, cellB string, ipA, ipB netip.Prefix) error {
	nsB, err := netns.GetFromName(cellB)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", cellB, err)
	}
	defer nsB.Close()
	err = withNetlink(cellA, func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "under"},
			PeerName:      "under",
			PeerNamespace: netlink.NsFd(nsB),
		})
	})
	if err != nil {
		return err
	}
	for ns, ip := range map[string]netip.Prefix{cellA: ipA, cellB: ipB} {
		err := withNetlink(ns, func(h *netlink.Handle) error {
			l, err := h.LinkByName("under")
			if err != nil {
				return err
			}
			ipn := &net.IPNet{IP: ip.Addr().AsSlice(), Mask: net.CIDRMask(ip.Bits(), 32)}
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
				return err
			}
			return h.LinkSetUp(l)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// withNetlink runs fn with a netlink handle in namespace ns.
func withNetlink(ns string, fn func(h *netlink.Handle) error) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns, err)
	}
	defer h.Close()
	if err := fn(h); err != nil {
		return fmt.Errorf("in netns %s: %w", ns, err)
	}
	return nil
}
