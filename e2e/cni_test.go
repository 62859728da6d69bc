package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lab"
)

// cniKit is what a CNI test needs: the built plugin in a CNI_PATH dir, the
// reference client cnitool, and a NETCONFPATH dir of conflists.
type cniKit struct {
	pluginDir string
	cnitool   string
	confDir   string
}

// newCNIKit builds weft-cni and finds cnitool: on PATH (.ci/run installs
// it), in GOPATH/bin, or installed into a temporary GOBIN.
func newCNIKit(t *testing.T) *cniKit {
	t.Helper()
	k := &cniKit{pluginDir: t.TempDir(), confDir: t.TempDir()}
	out, err := exec.Command("go", "build", "-o", filepath.Join(k.pluginDir, "weft-cni"), "github.com/weft-net/weft/cmd/weft-cni").CombinedOutput()
	if err != nil {
		t.Fatalf("build weft-cni: %v: %s", err, out)
	}
	if k.cnitool, err = exec.LookPath("cnitool"); err == nil {
		return k
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "cnitool")
		if _, err := os.Stat(p); err == nil {
			k.cnitool = p
			return k
		}
	}
	gobin := t.TempDir()
	cmd := exec.Command("go", "install", "github.com/containernetworking/cni/cnitool@v1.3.1")
	cmd.Env = append(os.Environ(), "GOBIN="+gobin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cnitool is not installed and `go install github.com/containernetworking/cni/cnitool@v1.3.1` failed: %v: %s", err, out)
	}
	k.cnitool = filepath.Join(gobin, "cnitool")
	return k
}

// conflist writes NETCONFPATH/name.conflist for the agent at socket.
func (k *cniKit) conflist(t *testing.T, name, version, socket string) {
	t.Helper()
	conf := fmt.Sprintf(`{
  "cniVersion": %q,
  "name": %q,
  "plugins": [
    {"type": "weft-cni", "socket": %q, "capabilities": {"app": true}}
  ]
}
`, version, name, socket)
	if err := os.WriteFile(filepath.Join(k.confDir, name+".conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cnitool runs `cnitool CMD NET NETNS` in the namespace of cell (where a
// container runtime on that host would run it) and returns stdout, stderr
// and the error. env adds CNI_ARGS / CAP_ARGS.
func (k *cniKit) run(l *lab.Lab, cell int, env []string, args ...string) (string, string, error) {
	c, err := l.Cell(cell)
	if err != nil {
		return "", "", err
	}
	cmd := lab.ExecIn(c.Netns, k.cnitool, args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "CNI_") && !strings.HasPrefix(e, "CAP_ARGS=") && !strings.HasPrefix(e, "NETCONFPATH=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, "CNI_PATH="+k.pluginDir, "NETCONFPATH="+k.confDir)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		err = errors.Join(errors.New("cnitool timed out"), <-done)
	}
	return stdout.String(), stderr.String(), err
}

// mustCNI runs cnitool and fails the test if it fails.
func (k *cniKit) must(t *testing.T, l *lab.Lab, cell int, env []string, args ...string) string {
	t.Helper()
	out, errOut, err := k.run(l, cell, env, args...)
	if err != nil {
		t.Fatalf("cnitool %s (%v) on cell %d: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), env, cell, err, out, errOut)
	}
	t.Logf("$ %s cnitool %s\n%s", strings.Join(env, " "), strings.Join(args, " "), out)
	return out
}

// addNetns makes an empty network namespace, as a container runtime does
// before it calls the plugin, and returns its path. Its name has the lab's
// run prefix, so the lab removes it. It is made like the lab's own
// namespaces (a bind mount of the thread's namespace file), not with `ip
// netns add`, which turns /run/netns into a shared bind mount of itself the
// first time and so hides the namespaces mounted before it.
func addNetns(t *testing.T, l *lab.Lab, name string) string {
	t.Helper()
	ns := l.Name(name)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		h, nerr := netns.NewNamed(ns)
		if nerr == nil {
			h.Close()
		}
		if err := netns.Set(orig); err != nil {
			errc <- err // the thread stays locked and is discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- nerr
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", ns, err)
	}
	return filepath.Join("/run/netns", ns)
}

// delNetns removes a namespace made by addNetns, as `ip netns del` does.
func delNetns(t *testing.T, path string) {
	t.Helper()
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		t.Fatalf("unmount %s: %v", path, err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// cniResult is the part of a CNI 1.0 result the test reads.
type cniResult struct {
	CNIVersion string `json:"cniVersion"`
	Interfaces []struct {
		Name    string `json:"name"`
		Mac     string `json:"mac"`
		Sandbox string `json:"sandbox"`
	} `json:"interfaces"`
	IPs []struct {
		Address   string `json:"address"`
		Gateway   string `json:"gateway"`
		Interface *int   `json:"interface"`
	} `json:"ips"`
	DNS struct {
		Nameservers []string `json:"nameservers"`
	} `json:"dns"`
	Routes []struct {
		Dst string `json:"dst"`
		GW  string `json:"gw"`
	} `json:"routes"`
}

// nsAddrs returns the IPv4 addresses of ifname in the named namespace
// ("" if it has no such interface).
func nsAddrs(t *testing.T, nsName, ifname string) string {
	t.Helper()
	h, err := netns.GetFromName(nsName)
	if err != nil {
		t.Fatalf("open netns %s: %v", nsName, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	link, err := nh.LinkByName(ifname)
	if err != nil {
		return ""
	}
	addrs, err := nh.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		out = append(out, a.IPNet.String())
	}
	return strings.Join(out, " ")
}

// TestCNI drives weft-cni with cnitool: ADD gives the runtime's namespace an
// overlay IP and registers its app, so the policy applies to it like to a
// `weft container create` container; CHECK passes; DEL is idempotent; a
// missing app is a CNI error that says what to set; STATUS tells whether
// the agent can attach.
func TestCNI(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	k := newCNIKit(t)
	c2, _ := l.Cell(2)
	k.conflist(t, "weft", "1.0.0", c2.Socket)

	// appA, made by the CLI on cell 1, serves HTTP on 8080.
	a := l.Name("appA")
	ipA, err := l.CreateContainer(1, "appA", a)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, a, 8080)

	nsPath := addNetns(t, l, "cni1")
	nsName := filepath.Base(nsPath)

	// No app: a CNI error object that says what to set, and nothing made.
	out, errOut, err := k.run(l, 2, nil, "add", "weft", nsPath)
	if err == nil {
		t.Fatalf("cnitool add without APP succeeded: %s", out)
	}
	msg := out + errOut
	if !strings.Contains(msg, "no app for this container") || !strings.Contains(msg, "APP=NAME") {
		t.Fatalf("cnitool add without APP said %q, want the CNI error naming CNI_ARGS APP", msg)
	}
	t.Logf("$ cnitool add weft %s   (no APP)\n%s%s", nsPath, out, errOut)
	if got := nsAddrs(t, nsName, "eth0"); got != "" {
		t.Fatalf("failed ADD left eth0 in %s: %s", nsName, got)
	}

	// ADD: the result names the interfaces, the /32, the gateway and the
	// default route, and the namespace has the address.
	out = k.must(t, l, 2, []string{"CNI_ARGS=APP=appC"}, "add", "weft", nsPath)
	var res cniResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("cnitool add printed %q: %v", out, err)
	}
	if len(res.IPs) != 1 || len(res.Interfaces) != 2 || len(res.Routes) != 1 {
		t.Fatalf("result %+v: want 1 ip, 2 interfaces, 1 route", res)
	}
	ipc, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil || ipc.Bits() != 32 || !netip.MustParsePrefix(lab.OverlayPrefix).Contains(ipc.Addr()) {
		t.Fatalf("result ip %q: want an overlay /32", res.IPs[0].Address)
	}
	if res.IPs[0].Gateway != "169.254.0.1" || res.Routes[0].Dst != "0.0.0.0/0" || res.Routes[0].GW != "169.254.0.1" {
		t.Fatalf("result %+v: want gateway and default route via 169.254.0.1", res)
	}
	if len(res.DNS.Nameservers) != 1 || res.DNS.Nameservers[0] != "169.254.0.2" {
		t.Fatalf("result DNS %+v: want the cell's server 169.254.0.2", res.DNS)
	}
	if ifc := res.Interfaces[1]; ifc.Name != "eth0" || ifc.Sandbox != nsPath || ifc.Mac == "" {
		t.Fatalf("container interface %+v: want eth0 in %s with a MAC", ifc, nsPath)
	}
	if got := nsAddrs(t, nsName, "eth0"); !strings.Contains(got, ipc.String()) {
		t.Fatalf("%s eth0 has %q, want %v", nsName, got, ipc)
	}

	// The CNI container (appC, cell 2) reaches appA (cell 1) only once a
	// policy allows it.
	expectRefused(t, nsName, ipA, 8080)
	weft(t, l, 1, "add-network-policy", "appC", "appA", "--protocol", "tcp", "--port", "8080")
	took := expectHTTP(t, nsName, ipA, 8080)
	t.Logf("appC (cnitool, cell 2) -> appA (cell 1): HTTP 200 %v after add-network-policy", took)

	// CHECK passes; the agent lists the container.
	k.must(t, l, 2, []string{"CNI_ARGS=APP=appC"}, "check", "weft", nsPath)
	if list := weft(t, l, 2, "container", "list"); !strings.Contains(list, ipc.Addr().String()) || !strings.Contains(list, "appC") {
		t.Fatalf("container list on cell 2 lacks %v appC:\n%s", ipc.Addr(), list)
	}

	// The runtime-config capability names the app too.
	ns2 := addNetns(t, l, "cni2")
	out = k.must(t, l, 2, []string{`CAP_ARGS={"app":"appD"}`}, "add", "weft", ns2)
	var res2 cniResult
	if err := json.Unmarshal([]byte(out), &res2); err != nil || len(res2.IPs) != 1 {
		t.Fatalf("cnitool add (CAP_ARGS) printed %q: %v", out, err)
	}
	if list := weft(t, l, 2, "container", "list"); !strings.Contains(list, "appD") {
		t.Fatalf("container list on cell 2 lacks appD:\n%s", list)
	}
	k.must(t, l, 2, nil, "del", "weft", ns2)

	// DEL twice: both succeed, the interface and the registration are gone.
	k.must(t, l, 2, nil, "del", "weft", nsPath)
	if got := nsAddrs(t, nsName, "eth0"); got != "" {
		t.Fatalf("after DEL %s still has eth0: %s", nsName, got)
	}
	if list := weft(t, l, 2, "container", "list"); strings.Contains(list, ipc.Addr().String()) {
		t.Fatalf("after DEL cell 2 still lists %v:\n%s", ipc.Addr(), list)
	}
	k.must(t, l, 2, nil, "del", "weft", nsPath)
	// ... and with the namespace gone as well.
	delNetns(t, nsPath)
	k.must(t, l, 2, nil, "del", "weft", nsPath)

	// STATUS (CNI 1.1.0): ready with the agent, error 50 without.
	k.conflist(t, "weft-v11", "1.1.0", c2.Socket)
	k.must(t, l, 2, nil, "status", "weft-v11", nsPath)
	k.conflist(t, "weft-noagent", "1.1.0", filepath.Join(t.TempDir(), "none.sock"))
	out, errOut, err = k.run(l, 2, nil, "status", "weft-noagent", nsPath)
	if err == nil || !strings.Contains(out+errOut, "no weft agent at") {
		t.Fatalf("cnitool status without an agent: err %v, said %q; want the plugin-not-available error", err, out+errOut)
	}

	// Metrics are off unless --metrics-addr is given.
	c1, _ := l.Cell(1)
	if _, _, err := lab.HTTPGetIn(c1.Netns, "http://"+netip.AddrPortFrom(c2.UnderlayIP, 9465).String()+"/metrics", 2*time.Second); !lab.IsConnRefused(err) {
		t.Fatalf("metrics without --metrics-addr: %v, want connection refused", err)
	}
}
