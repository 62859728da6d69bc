// Package e2e runs the c2c user story of DESIGN.md on a netns lab: real weft
// agents (the built binary) in cell namespaces, real TUN devices, real
// wireguard-go and memberlist, containers as network namespaces.
//
// The lab needs root and /dev/net/tun; without them the tests skip, except
// under CI=true where they fail.
package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// weftBin is the weft binary built by TestMain.
var weftBin string

func TestMain(m *testing.M) { os.Exit(lab.RunWithWeft(m, &weftBin)) }

// serveHTTP serves "hello from NAME" inside namespace ns on port.
func serveHTTP(t *testing.T, ns string, port int) {
	t.Helper()
	ln, err := lab.ListenIn(ns, "tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("listen in %s: %v", ns, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", ns)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// serveUDPEcho echoes datagrams inside namespace ns on port.
func serveUDPEcho(t *testing.T, ns string, port int) {
	t.Helper()
	pc, err := lab.ListenPacketIn(ns, "udp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("listen udp in %s: %v", ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

func url(ip netip.Addr, port int) string {
	return fmt.Sprintf("http://%s/", netip.AddrPortFrom(ip, uint16(port)))
}

// expectRefused asserts that a TCP connection from ns to ip:port is refused
// (a RST came back), not timed out.
func expectRefused(t *testing.T, ns string, ip netip.Addr, port int) {
	t.Helper()
	c, err := lab.DialIn(ns, "tcp", netip.AddrPortFrom(ip, uint16(port)).String(), 3*time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("%s -> %v:%d: connected, want connection refused", ns, ip, port)
	}
	if !lab.IsConnRefused(err) {
		t.Fatalf("%s -> %v:%d: %v, want connection refused", ns, ip, port, err)
	}
}

// expectHTTP polls until GET http://ip:port/ from ns answers 200 (policy
// takes effect asynchronously on remote cells) and returns how long it took.
func expectHTTP(t *testing.T, ns string, ip netip.Addr, port int) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(10 * time.Second)
	for {
		code, body, err := lab.HTTPGetIn(ns, url(ip, port), 2*time.Second)
		if err == nil && code == http.StatusOK && strings.HasPrefix(body, "hello from") {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %v:%d: no HTTP 200 within 10s: code %d err %v", ns, ip, port, code, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// udpExchange sends a datagram from ns to ip:port over a connected socket and
// returns the echo, or the error (ECONNREFUSED when an ICMP port-unreachable
// came back).
func udpExchange(ns string, ip netip.Addr, port int) (string, error) {
	c, err := lab.DialIn(ns, "udp", netip.AddrPortFrom(ip, uint16(port)).String(), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

func weft(t *testing.T, l *lab.Lab, cell int, args ...string) string {
	t.Helper()
	out, err := l.Weft(cell, args...)
	if err != nil {
		t.Fatalf("weft %s on cell %d: %v", strings.Join(args, " "), cell, err)
	}
	return out
}

// TestUserStory is DESIGN.md's story with two cells, plus direction, other
// ports, removal cutting an open connection, and the CLI's answers.
func TestUserStory(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	a, b := l.Name("appA"), l.Name("appB")
	ipA, err := l.CreateContainer(1, "appA", a)
	if err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	if !netip.MustParsePrefix("10.255.0.0/16").Contains(ipA) || !netip.MustParsePrefix("10.255.0.0/16").Contains(ipB) {
		t.Fatalf("overlay IPs %v %v outside 10.255.0.0/16", ipA, ipB)
	}
	serveHTTP(t, b, 8080)
	serveHTTP(t, b, 9090)
	serveHTTP(t, a, 8080)

	// 3. no policy: refused at once.
	expectRefused(t, a, ipB, 8080)

	// 4-5. policy from any cell; works within a second.
	out := weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	if !strings.Contains(out, "OK") {
		t.Fatalf("add-network-policy said %q", out)
	}
	took := expectHTTP(t, a, ipB, 8080)
	t.Logf("policy add -> first HTTP 200 across cells: %v", took)

	// Direction matters; other ports stay closed.
	expectRefused(t, b, ipA, 8080)
	expectRefused(t, a, ipB, 9090)

	// The policy is listed on the other cell too.
	list := weft(t, l, 2, "network-policies")
	if !strings.Contains(list, "source") || !strings.Contains(list, "appA") || !strings.Contains(list, "8080") {
		t.Fatalf("network-policies on cell 2:\n%s", list)
	}

	// 6. removal cuts new and open connections.
	open, err := lab.DialIn(a, "tcp", netip.AddrPortFrom(ipB, 8080).String(), 3*time.Second)
	if err != nil {
		t.Fatalf("open a connection before removal: %v", err)
	}
	defer open.Close()
	weft(t, l, 2, "remove-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	waitRefused(t, a, ipB, 8080)
	if err := expectCut(open); err != nil {
		t.Fatal(err)
	}
	// The removal reaches cell 1 by gossip; there, removing it again says
	// it does not exist, and OK, as cf does.
	waitFor(t, 5*time.Second, "policy removal visible on cell 1", func() bool {
		out, err := l.Weft(1, "network-policies")
		return err == nil && !strings.Contains(out, "appA")
	})
	if out, err := l.Weft(1, "remove-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080"); err != nil || !strings.Contains(out, "Policy does not exist.\nOK\n") {
		t.Fatalf("second removal: err %v, output %q; want 'Policy does not exist.' then OK, and success (as cf)", err, out)
	}
	st, err := l.Status(1)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 {
		t.Fatalf("cell 1 has %d WireGuard peers, want 1: %+v", len(st.Peers), st)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRefused polls until connections are refused again (the removal reaches
// the destination cell by gossip).
func waitRefused(t *testing.T, ns string, ip netip.Addr, port int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := lab.DialIn(ns, "tcp", netip.AddrPortFrom(ip, uint16(port)).String(), 2*time.Second)
		if err == nil {
			c.Close()
		} else if lab.IsConnRefused(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %v:%d still not refused 5s after policy removal (last: %v)", ns, ip, port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// expectCut sends a request on a connection that was open when its policy
// was removed and expects it to fail (RST), not to answer.
func expectCut(c net.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return nil // already reset
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err == nil {
		return fmt.Errorf("open connection still answered after policy removal: %q", buf[:n])
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return fmt.Errorf("open connection hung after policy removal instead of being reset: %v", err)
	}
	return nil
}

// TestSameCell: containers on one cell are gated by policy the same way
// (hair-pinned through the agent).
func TestSameCell(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 1, WeftBin: weftBin})
	a, c := l.Name("appA"), l.Name("appC")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipC, err := l.CreateContainer(1, "appC", c)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, c, 8080)
	expectRefused(t, a, ipC, 8080)
	weft(t, l, 1, "add-network-policy", "appA", "appC")
	took := expectHTTP(t, a, ipC, 8080)
	t.Logf("policy add -> first HTTP 200 on one cell: %v", took)
	weft(t, l, 1, "remove-network-policy", "appA", "appC", "--protocol", "tcp", "--port", "8080")
	waitRefused(t, a, ipC, 8080)

	// A name in use is refused and changes nothing.
	if out, err := l.Weft(1, "container", "create", "--app", "appX", "--name", c); err == nil || !strings.Contains(out, "already in use") {
		t.Fatalf("duplicate container name: err %v, output %q", err, out)
	}
	if _, _, err := lab.HTTPGetIn(a, url(ipC, 8080), time.Second); !lab.IsConnRefused(err) {
		t.Fatalf("after failed duplicate create: %v, want refused (container untouched, policy still gone)", err)
	}
}

// TestLateCellUDPAndRanges: a third cell joins later and reaches existing
// apps once policy allows; UDP rules and port ranges work.
func TestLateCellUDPAndRanges(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	b := l.Name("appB")
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, b, 8080)
	serveHTTP(t, b, 9005)
	serveHTTP(t, b, 9011)
	serveUDPEcho(t, b, 5353)

	c3, err := l.AddCell()
	if err != nil {
		t.Fatal(err)
	}
	d := l.Name("appD")
	if _, err := l.CreateContainer(c3.Index, "appD", d); err != nil {
		t.Fatal(err)
	}
	expectRefused(t, d, ipB, 8080)
	weft(t, l, c3.Index, "add-network-policy", "appD", "appB")
	expectHTTP(t, d, ipB, 8080)

	// UDP: denied datagrams get ICMP port-unreachable (ECONNREFUSED on a
	// connected socket), allowed ones are echoed.
	if _, err := udpExchange(d, ipB, 5353); !lab.IsConnRefused(err) {
		t.Fatalf("udp without policy: %v, want connection refused", err)
	}
	weft(t, l, 1, "add-network-policy", "appD", "appB", "--protocol", "udp", "--port", "5353")
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := udpExchange(d, ipB, 5353)
		if err == nil && got == "ping" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("udp with policy: %q %v", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Port range 9000-9010: 9005 in, 9011 out.
	weft(t, l, 2, "add-network-policy", "appD", "appB", "--protocol", "tcp", "--port", "9000-9010")
	expectHTTP(t, d, ipB, 9005)
	expectRefused(t, d, ipB, 9011)
	// Reverse direction stays refused.
	serveHTTP(t, d, 8080)
	ipD := mustContainerIP(t, l, c3.Index, d)
	expectRefused(t, b, ipD, 8080)
}

func mustContainerIP(t *testing.T, l *lab.Lab, cell int, name string) netip.Addr {
	t.Helper()
	out := weft(t, l, cell, "container", "list")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == name {
			return netip.MustParseAddr(f[2])
		}
	}
	t.Fatalf("container %s not listed on cell %d:\n%s", name, cell, out)
	return netip.Addr{}
}
