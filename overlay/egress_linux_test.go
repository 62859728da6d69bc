package overlay

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/policy"
)

// egressLab is three namespaces: a cell with the guard, a container behind
// a "wc" veth (10.255.1.2) and "the internet" on the cell's underlay
// (198.18.0.2), which has no route to the overlay: only NAT gets replies back.
type egressLab struct {
	cell, ctr, inet string
	veth            string
}

func newEgressLab(t *testing.T) egressLab {
	t.Helper()
	lab.RequireRoot(t)
	p := lab.RunPrefix()
	l := egressLab{cell: p + "-egc", ctr: p + "-egk", inet: p + "-egi", veth: attach.HostVethName("egress")}
	for _, ns := range []string{l.cell, l.ctr, l.inet} {
		exec.Command("ip", "netns", "del", ns).Run() // a leftover of this pid
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{l.cell, l.ctr, l.inet} {
		run("ip", "netns", "add", ns)
		run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	run("ip", "-n", l.cell, "link", "add", l.veth, "type", "veth", "peer", "name", "eth0", "netns", l.ctr)
	run("ip", "-n", l.cell, "addr", "add", "10.255.1.1/24", "dev", l.veth)
	run("ip", "-n", l.cell, "link", "set", l.veth, "up")
	run("ip", "-n", l.ctr, "addr", "add", "10.255.1.2/24", "dev", "eth0")
	run("ip", "-n", l.ctr, "link", "set", "eth0", "up")
	run("ip", "-n", l.ctr, "route", "add", "default", "via", "10.255.1.1")
	run("ip", "-n", l.cell, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", l.inet)
	run("ip", "-n", l.cell, "addr", "add", "198.18.0.1/24", "dev", "ul0")
	run("ip", "-n", l.cell, "link", "set", "ul0", "up")
	run("ip", "-n", l.inet, "addr", "add", "198.18.0.2/24", "dev", "ul0")
	run("ip", "-n", l.inet, "link", "set", "ul0", "up")
	run("ip", "netns", "exec", l.cell, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return l
}

// echoServer listens on 198.18.0.2:port in the internet namespace and
// echoes lines.
func (l egressLab) echoServer(t *testing.T, port int) {
	t.Helper()
	var ln net.Listener
	if err := lab.InNetns(l.inet, func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf("198.18.0.2:%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
}

// dial connects from the container with a short timeout.
func (l egressLab) dial(port int) (net.Conn, error) {
	var c net.Conn
	err := lab.InNetns(l.ctr, func() (err error) {
		c, err = net.DialTimeout("tcp4", fmt.Sprintf("198.18.0.2:%d", port), 500*time.Millisecond)
		return err
	})
	return c, err
}

// echo reports whether a line sent on c comes back within the deadline.
func echo(c net.Conn, msg string) bool {
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == msg+"\n"
}

// TestEgressRules's checks run inside lab.InNetns and return errors: t.Fatal
// there would end InNetns's goroutine and hang the test.
func TestEgressRules(t *testing.T) {
	l := newEgressLab(t)
	l.echoServer(t, 8080)
	l.echoServer(t, 8081)
	if err := lab.InNetns(l.cell, func() error {
		g := newGuard("weftg0", netip.MustParseAddr("169.254.0.2"), 51820, netip.MustParsePrefix("10.255.0.0/16"))
		if err := g.install(); err != nil {
			return err
		}
		if _, err := g.Sync([]GuardEntry{{Veth: l.veth, IP: netip.MustParseAddr("10.255.1.2")}}); err != nil {
			return err
		}

		// Default deny, counted, refused at once (a reset, not a hang).
		if c, err := l.dial(8080); err == nil {
			c.Close()
			return errors.New("container reached the internet without an egress rule")
		} else if !lab.IsConnRefused(err) {
			return fmt.Errorf("dial without an egress rule: %v, want connection refused", err)
		}
		if cnt, _ := g.Counters(); cnt.Egress == 0 || cnt.EgressAccepted != 0 {
			return fmt.Errorf("counters after a denied dial: %+v; want egress > 0, egress_accepted 0", cnt)
		}

		// A rule for the app, port 8080 only; a rule of another app allows nothing here.
		rule, err := policy.ParseEgressRule("appA", "198.18.0.0/24", "tcp", "8080", netip.MustParsePrefix("10.255.0.0/16"))
		if err != nil {
			return err
		}
		other, _ := policy.ParseEgressRule("appB", "198.18.0.0/24", "tcp", "8081", netip.MustParsePrefix("10.255.0.0/16"))
		ips := map[string][]netip.Addr{"appA": {netip.MustParseAddr("10.255.1.2")}}
		if err := g.SyncEgress([]policy.EgressRule{rule, other}, ips); err != nil {
			return err
		}
		c, err := l.dial(8080)
		if err != nil {
			return fmt.Errorf("dial with the rule: %v", err)
		}
		defer c.Close()
		if !echo(c, "hello") {
			return errors.New("no echo through the egress rule")
		}
		if c2, err := l.dial(8081); err == nil {
			c2.Close()
			return errors.New("port 8081 reachable with a rule for 8080 and another app's rule for 8081")
		}
		if cnt, _ := g.Counters(); cnt.EgressAccepted == 0 {
			return fmt.Errorf("counters after an allowed flow: %+v; want egress_accepted > 0", cnt)
		}

		// Removing the rule cuts the open connection and refuses new ones.
		if err := g.SyncEgress(nil, ips); err != nil {
			return err
		}
		if echo(c, "again") {
			return errors.New("open connection still passes after the rule's removal")
		}
		if c3, err := l.dial(8080); err == nil {
			c3.Close()
			return errors.New("new connection after the rule's removal")
		}

		// A re-install (agent restart) keeps the table's chains; the egress
		// rules come back with the agent's next SyncEgress.
		g2 := newGuard("weftg0", netip.MustParseAddr("169.254.0.2"), 51820, netip.MustParsePrefix("10.255.0.0/16"))
		if err := g2.install(); err != nil {
			return err
		}
		if err := g2.SyncEgress([]policy.EgressRule{rule}, ips); err != nil {
			return err
		}
		c4, err := l.dial(8080)
		if err != nil {
			return fmt.Errorf("dial after re-install and sync: %v", err)
		}
		defer c4.Close()
		if !echo(c4, "back") {
			return errors.New("no echo after re-install")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
