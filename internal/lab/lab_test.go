package lab

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// runNetns lists the named namespaces of run prefix run.
func runNetns(t *testing.T, run string) []string {
	t.Helper()
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), run+"-") {
			names = append(names, e.Name())
		}
	}
	return names
}

// netnsInode returns the inode identifying named namespace name.
func netnsInode(t *testing.T, name string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(netnsDir, name), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// netnsAlive reports whether any thread of any process is in the
// namespace with inode ino.
func netnsAlive(ino uint64) bool {
	tasks, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/ns/net")
	for _, p := range tasks {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil && st.Ino == ino {
			return true
		}
	}
	return false
}

func hostLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

// echoOnce accepts one connection on ln and echoes one line back.
func echoOnce(ln net.Listener) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	io.Copy(c, io.LimitReader(c, 5))
}

func roundTrip(t *testing.T, ns, addr string) {
	t.Helper()
	c, err := DialIn(ns, "tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo from %s: %q, %v", addr, buf, err)
	}
}

func TestTopology(t *testing.T) {
	before := hostLinks(t)
	l := Setup(t, Config{Cells: 3, NoStart: true})
	if l.Run != "wl"+strconv.Itoa(os.Getpid()) || l.Name("appA") != l.Run+"-appA" {
		t.Fatalf("names: run %q, Name %q", l.Run, l.Name("appA"))
	}
	want := []string{l.Run + "-c1", l.Run + "-c2", l.Run + "-c3", l.Run + "-ul"}
	if got := runNetns(t, l.Run); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("namespaces %v, want %v", got, want)
	}
	c1 := l.Cells[0]
	if c1.UnderlayIP.String() != "198.18.0.11" || c1.GossipAddr != "198.18.0.11:7946" ||
		c1.Interface != l.Run+"c1" || c1.Netns != l.Run+"-c1" {
		t.Fatalf("cell 1: %+v", c1)
	}

	// The underlay's bridge hands no frame to netfilter (br_netfilter,
	// where the kernel has it).
	if err := InNetns(l.Underlay, func() error {
		for _, f := range bridgeNetfilter {
			b, err := os.ReadFile(f)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil || strings.TrimSpace(string(b)) != "0" {
				return fmt.Errorf("%s = %q (%v), want 0", f, b, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("underlay: %v", err)
	}

	// lo is up and forwarding is on in every cell.
	for _, c := range l.Cells {
		err := InNetns(c.Netns, func() error {
			fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
			if err != nil || strings.TrimSpace(string(fwd)) != "1" {
				return fmt.Errorf("ip_forward %q, %v", fwd, err)
			}
			lo, err := netlink.LinkByName("lo")
			if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
				return fmt.Errorf("lo not up: %v", err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", c.Netns, err)
		}
	}

	// Underlay: cell 2 reaches a listener of cell 1 at its address.
	ln, err := ListenIn(c1.Netns, "tcp", "198.18.0.11:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go echoOnce(ln)
	roundTrip(t, l.Cells[1].Netns, ln.Addr().String())

	// A partitioned cell is unreachable until its link comes back.
	if err := l.SetLink(1, false); err != nil {
		t.Fatal(err)
	}
	if c, err := DialIn(l.Cells[2].Netns, "tcp", ln.Addr().String(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("dial across a down link succeeded")
	}
	if err := l.SetLink(1, true); err != nil {
		t.Fatal(err)
	}
	go echoOnce(ln)
	roundTrip(t, l.Cells[2].Netns, ln.Addr().String())

	// A split underlay: cells 1 and 2 on one bridge, 3 on the other, until
	// Heal; then the second bridge is gone.
	if err := l.Partition(3); err != nil {
		t.Fatal(err)
	}
	if c, err := DialIn(l.Cells[2].Netns, "tcp", ln.Addr().String(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("dial across the split underlay succeeded")
	}
	go echoOnce(ln)
	roundTrip(t, l.Cells[1].Netns, ln.Addr().String())
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	go echoOnce(ln)
	roundTrip(t, l.Cells[2].Netns, ln.Addr().String())
	if err := withHandle(l.Underlay, func(h *netlink.Handle) error {
		if _, err := h.LinkByName(l.bridge2()); err == nil {
			return errors.New("second bridge left after Heal")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ln.Close()

	// The host namespace is untouched.
	if after := hostLinks(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("host links changed: %v -> %v", before, after)
	}

	inodes := map[string]uint64{}
	for _, name := range want {
		inodes[name] = netnsInode(t, name)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := runNetns(t, l.Run); len(got) != 0 {
		t.Fatalf("namespaces left after Close: %v", got)
	}
	for name, ino := range inodes {
		if netnsAlive(ino) {
			t.Errorf("netns %s still has processes", name)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Cell(1); err == nil {
		t.Fatal("Cell after Close succeeded")
	}
}

func TestStaleCleanup(t *testing.T) {
	RequireRoot(t)
	pidMax, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	max, _ := strconv.Atoi(strings.TrimSpace(string(pidMax)))
	dead := "wl" + strconv.Itoa(max+1) // no process can have this id
	stale := dead + "-x"
	keep := RunPrefix() + "-keep"
	for _, name := range []string{stale, keep} {
		if err := newNamedNetns(name, false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deleteNetns(name) })
	}
	os.MkdirAll(uapiDir, 0o755)
	staleSock := filepath.Join(uapiDir, dead+"c1.sock")
	liveSock := filepath.Join(uapiDir, RunPrefix()+"c9.sock")
	for _, p := range []string{staleSock, liveSock} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}

	l := Setup(t, Config{Cells: 1, NoStart: true})
	if _, err := os.Stat(filepath.Join(netnsDir, stale)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale netns %s survived: %v", stale, err)
	}
	if _, err := os.Stat(staleSock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale socket %s survived: %v", staleSock, err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, keep)); err != nil {
		t.Errorf("live netns %s removed by stale cleanup: %v", keep, err)
	}
	if _, err := os.Stat(liveSock); err != nil {
		t.Errorf("live socket %s removed by stale cleanup: %v", liveSock, err)
	}
	// Close removes everything of its own run, including those.
	l.Close()
	if _, err := os.Stat(filepath.Join(netnsDir, keep)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left %s: %v", keep, err)
	}
	if _, err := os.Stat(liveSock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left %s: %v", liveSock, err)
	}
}

func TestOneLabPerProcess(t *testing.T) {
	Setup(t, Config{Cells: 1, NoStart: true})
	if l2, err := New(Config{Cells: 1, NoStart: true}); err == nil {
		l2.Close()
		t.Fatal("a second lab in the same process was allowed")
	}
}

func TestInNetns(t *testing.T) {
	l := Setup(t, Config{Cells: 2, NoStart: true})
	c1, c2 := l.Cells[0], l.Cells[1]

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	// A listener on the cell's address only works inside the cell.
	ln, err := ListenIn(c1.Netns, "tcp", "198.18.0.11:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln2, err := net.Listen("tcp", "198.18.0.11:0"); err == nil {
		ln2.Close()
		t.Fatal("198.18.0.11 exists in the test's own namespace")
	}

	// HTTP across the underlay.
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hi "+r.URL.Path)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	code, body, err := HTTPGetIn(c2.Netns, "http://"+ln.Addr().String()+"/x", 2*time.Second)
	if err != nil || code != 200 || body != "hi /x" {
		t.Fatalf("HTTPGetIn: %d %q %v", code, body, err)
	}

	// UDP across the underlay.
	pc1, err := ListenPacketIn(c1.Netns, "udp", "198.18.0.11:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc1.Close()
	pc2, err := ListenPacketIn(c2.Netns, "udp", "198.18.0.12:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc2.Close()
	if _, err := pc2.WriteTo([]byte("ping"), pc1.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	pc1.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	n, from, err := pc1.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" || from.String() != pc2.LocalAddr().String() {
		t.Fatalf("udp: %q from %v, %v", buf[:n], from, err)
	}

	// A closed port answers at once with "connection refused".
	_, err = DialIn(c2.Netns, "tcp", "198.18.0.11:1", time.Second)
	if !IsConnRefused(err) {
		t.Fatalf("dial closed port: %v, want connection refused", err)
	}

	// Errors and panics of fn come back to the caller.
	sentinel := errors.New("sentinel")
	if err := InNetns(c1.Netns, func() error { return sentinel }); err != sentinel {
		t.Fatalf("InNetns error = %v", err)
	}
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v, want boom", r)
			}
		}()
		InNetns(c1.Netns, func() error { panic("boom") })
	}()
	if err := InNetns("wl-no-such-netns", func() error { return nil }); err == nil {
		t.Fatal("InNetns of a missing namespace succeeded")
	}

	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !before.Equal(after) {
		t.Fatalf("calling thread moved from %v to %v", before, after)
	}
	self, err := netns.GetFromPid(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	if !self.Equal(before) {
		t.Fatalf("process netns %v, thread started in %v", self, before)
	}

	// ExecIn runs commands in the namespace.
	out, err := ExecIn(c1.Netns, "cat", "/proc/net/dev").CombinedOutput()
	if err != nil || !strings.Contains(string(out), c1.cellLink) {
		t.Fatalf("ExecIn: %v\n%s", err, out)
	}
}

func TestVethPair(t *testing.T) {
	RequireRoot(t)
	nsA, nsB := RunPrefix()+"-va", RunPrefix()+"-vb"
	ipA, ipB := netip.MustParsePrefix("198.18.0.201/30"), netip.MustParsePrefix("198.18.0.202/30")
	cleanup, err := NewVethPair(nsA, nsB, ipA, ipB)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	if _, err := NewVethPair(nsA, RunPrefix()+"-vc", ipA, ipB); err == nil {
		t.Fatal("NewVethPair over an existing namespace succeeded")
	}
	if _, err := os.Stat(filepath.Join(netnsDir, nsA)); err != nil {
		t.Fatalf("failed NewVethPair removed the existing %s: %v", nsA, err)
	}
	ln, err := ListenIn(nsB, "tcp", netip.AddrPortFrom(ipB.Addr(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go echoOnce(ln)
	roundTrip(t, nsA, ln.Addr().String())
	cleanup()
	cleanup()
	for _, ns := range []string{nsA, nsB, RunPrefix() + "-vc"} {
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left: %v", ns, err)
		}
	}
}

func TestParseStatus(t *testing.T) {
	st, err := ParseStatus([]byte(`{"name":"c1","subnet":"10.255.1.0/24","policies":3,
		"members":[{"Name":"c1","state":"alive"},"c2",{"name":"c3","status":"dead","address":"198.18.0.13:7946"}],
		"peers":[{"public_key":"AAA=","endpoint":"198.18.0.12:51820","allowed_ips":["10.255.2.0/24"],"rx_bytes":5},
		         {"publicKey":"BBB=","Endpoint":null}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != "c1" || st.Subnet != "10.255.1.0/24" || len(st.Members) != 3 || len(st.Peers) != 2 {
		t.Fatalf("%+v", st)
	}
	if st.MemberState("c1") != "alive" || st.Members[1].Name != "c2" || st.MemberState("c3") != "dead" ||
		st.Members[2].Addr != "198.18.0.13:7946" {
		t.Fatalf("members %+v", st.Members)
	}
	p := st.Peers[0]
	if p.PublicKey != "AAA=" || p.Endpoint != "198.18.0.12:51820" || fmt.Sprint(p.AllowedIPs) != "[10.255.2.0/24]" ||
		st.Peers[1].PublicKey != "BBB=" || st.Peers[1].Endpoint != "" {
		t.Fatalf("peers %+v", st.Peers)
	}
	if st, err := ParseStatus([]byte(`{"name":"c1","subnet":null}`)); err != nil || st.Subnet != "" {
		t.Fatalf("null subnet: %+v %v", st, err)
	}
	if _, err := ParseStatus([]byte("not json")); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestParseIPLine(t *testing.T) {
	for in, want := range map[string]string{
		"10.255.1.2\n":                 "10.255.1.2",
		"creating...\n10.255.1.3/32\n": "10.255.1.3",
	} {
		if got, err := parseIPLine(in); err != nil || got.String() != want {
			t.Errorf("parseIPLine(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := parseIPLine("oops"); err == nil {
		t.Error("parseIPLine(oops) succeeded")
	}
}
