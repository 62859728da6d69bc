package e2e

import (
	"bytes"
	"crypto/sha512"
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
    {"type": "weft-cni", "socket": %q, "capabilities": {"app": true, "io.kubernetes.cri.pod-annotations": true}}
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

// criCNIArgs is CNI_ARGS as containerd's CRI plugin sends it for a pod
// (toCNILabels in internal/cri/server/sandbox_run.go: K8S_POD_NAMESPACE,
// K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID, IgnoreUnknown=1).
func criCNIArgs(namespace, pod, sandboxID string) string {
	return "CNI_ARGS=K8S_POD_NAMESPACE=" + namespace + ";K8S_POD_NAME=" + pod +
		";K8S_POD_INFRA_CONTAINER_ID=" + sandboxID + ";K8S_POD_UID=6f1c2a8e-0b7d-4c55-9a11-2f3e4d5c6b7a;IgnoreUnknown=1"
}

// criCapArgs is the capability args containerd's CRI plugin passes
// (cniNamespaceOpts: the pod's annotations always, port mappings and DNS
// when the pod has them); libcni hands the plugin those its conflist
// declares.
func criCapArgs(annotations string) string {
	return `CAP_ARGS={"io.kubernetes.cri.pod-annotations":` + annotations + `,` +
		`"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}],` +
		`"dns":{"servers":["10.96.0.10"],"searches":["shop.svc.cluster.local"],"options":["ndots:5"]}}`
}

// cnitoolID is the container id cnitool passes for a namespace path.
func cnitoolID(nsPath string) string {
	sum := sha512.Sum512([]byte(nsPath))
	return fmt.Sprintf("cnitool-%x", sum[:10])
}

// cellContainers is `weft container list` of a cell: name -> "APP IP".
func cellContainers(t *testing.T, l *lab.Lab, cell int) map[string]string {
	t.Helper()
	var list []struct{ Name, App, IP string }
	if err := json.Unmarshal([]byte(weft(t, l, cell, "container", "list", "--output", "json")), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, c := range list {
		out[c.Name] = c.App + " " + c.IP
	}
	return out
}

// cniGC runs the plugin's GC as libcni does for a 1.1.0 conflist: the
// network's config with cni.dev/valid-attachments on stdin.
func (k *cniKit) gc(t *testing.T, network, socket string, valid ...[2]string) {
	t.Helper()
	type att struct {
		ContainerID string `json:"containerID"`
		IfName      string `json:"ifname"`
	}
	conf := map[string]any{"cniVersion": "1.1.0", "name": network, "type": "weft-cni", "socket": socket,
		"cni.dev/valid-attachments": []att{}}
	for _, v := range valid {
		conf["cni.dev/valid-attachments"] = append(conf["cni.dev/valid-attachments"].([]att), att{v[0], v[1]})
	}
	b, _ := json.Marshal(conf)
	cmd := exec.Command(filepath.Join(k.pluginDir, "weft-cni"))
	cmd.Env = []string{"CNI_COMMAND=GC", "CNI_PATH=" + k.pluginDir}
	cmd.Stdin = bytes.NewReader(b)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("weft-cni GC %s: %v: %s", b, err, out)
	}
	t.Logf("GC of network %s, valid %v", network, valid)
}

// TestCNIAttachments drives weft-cni as kubelet's runtime does (containerd's
// CRI CNI_ARGS and capability args, with and without the weft.dev/app
// annotation) with two interfaces on one container: each interface is its
// own attachment (ADD, CHECK, DEL by container id and interface), traffic
// to and from the second interface passes the guard, DEL twice and DEL of
// an interface never added change nothing else, an agent restart keeps
// them, GC removes exactly the attachments of its network not listed as
// valid, and DEL after the namespace is gone succeeds.
func TestCNIAttachments(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	k := newCNIKit(t)
	c2, _ := l.Cell(2)
	k.conflist(t, "weft", "1.1.0", c2.Socket)
	k.conflist(t, "weft-b", "1.1.0", c2.Socket)

	a := l.Name("appA")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}

	nsPath := addNetns(t, l, "pod")
	nsName := filepath.Base(nsPath)
	id := cnitoolID(nsPath)
	name := func(network, ifname string) string { return network + "/" + id + "/" + ifname }
	args := criCNIArgs("shop", "web-7d9c8b6f5-x2k9p", id)
	capEth0 := criCapArgs(`{"weft.dev/app":"checkout","other":"x"}`) // a runtime sends the same on CHECK

	// eth0: the pod annotation names the app.
	out := k.must(t, l, 2, []string{args, capEth0}, "add", "weft", nsPath)
	var res0 cniResult
	if err := json.Unmarshal([]byte(out), &res0); err != nil || len(res0.IPs) != 1 {
		t.Fatalf("ADD eth0 printed %q: %v", out, err)
	}
	ip0 := strings.TrimSuffix(res0.IPs[0].Address, "/32")
	// net1 of the same container: no annotation, so the app comes from the
	// pod name (a Deployment's pod: web.shop).
	out = k.must(t, l, 2, []string{args, criCapArgs(`{}`), "CNI_IFNAME=net1"}, "add", "weft", nsPath)
	var res1 cniResult
	if err := json.Unmarshal([]byte(out), &res1); err != nil || len(res1.IPs) != 1 || res1.Interfaces[1].Name != "net1" {
		t.Fatalf("ADD net1 printed %q: %v", out, err)
	}
	ip1 := strings.TrimSuffix(res1.IPs[0].Address, "/32")
	if ip0 == ip1 {
		t.Fatalf("eth0 and net1 both got %s", ip0)
	}
	want := map[string]string{name("weft", "eth0"): "checkout " + ip0, name("weft", "net1"): "web.shop " + ip1}
	if got := cellContainers(t, l, 2); len(got) != 2 || got[name("weft", "eth0")] != want[name("weft", "eth0")] ||
		got[name("weft", "net1")] != want[name("weft", "net1")] {
		t.Fatalf("cell 2 containers %v, want %v", got, want)
	}
	if got := nsAddrs(t, nsName, "eth0") + " " + nsAddrs(t, nsName, "net1"); got != ip0+"/32 "+ip1+"/32" {
		t.Fatalf("%s has %q, want %s on eth0 and %s on net1", nsName, got, ip0, ip1)
	}
	k.must(t, l, 2, []string{args, capEth0}, "check", "weft", nsPath)
	k.must(t, l, 2, []string{args, criCapArgs(`{}`), "CNI_IFNAME=net1"}, "check", "weft", nsPath)

	// Traffic to the second interface (its replies leave from its address,
	// through its own veth, which the guard binds that address to): refused
	// until appA may reach web.shop, then served; eth0 (checkout) stays
	// refused.
	serveHTTP(t, nsName, 8080)
	ipNet1, ipEth0 := netip.MustParseAddr(ip1), netip.MustParseAddr(ip0)
	expectRefused(t, a, ipNet1, 8080)
	weft(t, l, 1, "add-network-policy", "appA", "web.shop", "--protocol", "tcp", "--port", "8080")
	took := expectHTTP(t, a, ipNet1, 8080)
	t.Logf("appA (cell 1) -> web.shop on net1 (cell 2): HTTP 200 %v after add-network-policy", took)
	expectRefused(t, a, ipEth0, 8080)

	// DEL of an interface never added, and of net1 twice: only net1 goes.
	k.must(t, l, 2, []string{args, "CNI_IFNAME=net9"}, "del", "weft", nsPath)
	k.must(t, l, 2, []string{args, "CNI_IFNAME=net1"}, "del", "weft", nsPath)
	k.must(t, l, 2, []string{args, "CNI_IFNAME=net1"}, "del", "weft", nsPath)
	if got := cellContainers(t, l, 2); len(got) != 1 || got[name("weft", "eth0")] != want[name("weft", "eth0")] {
		t.Fatalf("after DEL net1: cell 2 containers %v, want only eth0 (%s)", got, want[name("weft", "eth0")])
	}
	if got := nsAddrs(t, nsName, "eth0"); got != ip0+"/32" {
		t.Fatalf("after DEL net1 eth0 has %q, want %s", got, ip0)
	}
	k.must(t, l, 2, []string{args, capEth0}, "check", "weft", nsPath)

	// After an agent restart: CHECK still passes and a new ADD works.
	if err := l.StartCell(2); err != nil { // stops it first
		t.Fatal(err)
	}
	k.must(t, l, 2, []string{args, capEth0}, "check", "weft", nsPath)
	out = k.must(t, l, 2, []string{args, criCapArgs(`{"weft.dev/app":"checkout"}`), "CNI_IFNAME=net2"}, "add", "weft", nsPath)
	var res2 cniResult
	if err := json.Unmarshal([]byte(out), &res2); err != nil || len(res2.IPs) != 1 || strings.HasPrefix(res2.IPs[0].Address, ip0+"/") {
		t.Fatalf("ADD net2 after restart printed %q: %v (eth0 has %s)", out, err, ip0)
	}
	// One more on another network of the same cell.
	k.must(t, l, 2, []string{args, criCapArgs(`{}`), "CNI_IFNAME=net3"}, "add", "weft-b", nsPath)

	// GC of network weft with eth0 valid: net2 goes; eth0, weft-b's net3
	// and the CLI container on cell 1 stay.
	k.gc(t, "weft", c2.Socket, [2]string{id, "eth0"})
	got := cellContainers(t, l, 2)
	if _, ok := got[name("weft", "net2")]; ok || len(got) != 2 || got[name("weft", "eth0")] == "" || got[name("weft-b", "net3")] == "" {
		t.Fatalf("after GC of weft (eth0 valid): cell 2 containers %v, want weft eth0 and weft-b net3", got)
	}
	if nsAddrs(t, nsName, "net2") != "" || nsAddrs(t, nsName, "eth0") != ip0+"/32" {
		t.Fatalf("after GC: net2 %q eth0 %q, want net2 gone and eth0 %s", nsAddrs(t, nsName, "net2"), nsAddrs(t, nsName, "eth0"), ip0)
	}
	// GC of weft-b with nothing valid removes net3.
	k.gc(t, "weft-b", c2.Socket)
	if got := cellContainers(t, l, 2); len(got) != 1 || got[name("weft", "eth0")] == "" {
		t.Fatalf("after GC of weft-b: cell 2 containers %v, want weft eth0 only", got)
	}

	// DEL after the namespace is gone: success, and the attachment is gone.
	delNetns(t, nsPath)
	k.must(t, l, 2, []string{args}, "del", "weft", nsPath)
	if got := cellContainers(t, l, 2); len(got) != 0 {
		t.Fatalf("after DEL with the namespace gone: cell 2 containers %v, want none", got)
	}
	if _, ok := cellContainers(t, l, 1)[a]; !ok {
		t.Fatalf("cell 1 lost its CLI container %s", a)
	}
}
