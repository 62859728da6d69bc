package e2e

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// A real container runtime end to end: podman (Debian's package, 4.3, whose
// network backend is still CNI) runs containers on two cells of the lab,
// each attached through weft-cni. docs/cni.md says why podman and how it is
// set up here.

// podmanKit runs podman with storage, state and network config of the test
// only: nothing of the host's podman setup is read or changed.
type podmanKit struct {
	bin     string
	dir     string // root, runroot, tmpdir, containers.conf, per-cell net.d
	conf    string // CONTAINERS_CONF
	runtime string // OCI runtime: runc when installed (crun refuses this machine's hybrid cgroups)
	image   string
}

// needPodman finds podman, runc and a static busybox; without them the test
// skips, or fails under CI=true, where .ci/run installs them.
func needPodman(t *testing.T) (podman, busybox string) {
	t.Helper()
	missing := func(what string, err error) {
		msg := fmt.Sprintf("%s: %v (apt-get install podman runc busybox-static)", what, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	podman, err := exec.LookPath("podman")
	if err != nil {
		missing("podman is not installed", err)
	}
	busybox, err = exec.LookPath("busybox")
	if err != nil {
		missing("busybox is not installed", err)
	}
	if f, err := elf.Open(busybox); err != nil {
		missing("busybox "+busybox, err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				missing("busybox "+busybox+" is dynamically linked", errors.New("an image of it alone cannot run"))
			}
		}
		f.Close()
	}
	return podman, busybox
}

// newPodmanKit writes a containers.conf for the CNI backend with weft-cni
// (pluginDir) as its only plugin dir, and imports an image made of a static
// busybox (no registry is reachable).
func newPodmanKit(t *testing.T, l *lab.Lab, pluginDir string) *podmanKit {
	t.Helper()
	bin, busybox := needPodman(t)
	p := &podmanKit{bin: bin, dir: t.TempDir(), image: "localhost/" + strings.ToLower(l.Name("busybox")) + ":e2e"}
	if _, err := exec.LookPath("runc"); err == nil {
		p.runtime = "runc"
	}
	p.conf = filepath.Join(p.dir, "containers.conf")
	conf := fmt.Sprintf(`[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = %q
volume_path = %q

[network]
network_backend = "cni"
cni_plugin_dirs = [%q]
`, filepath.Join(p.dir, "tmp"), filepath.Join(p.dir, "volumes"), pluginDir)
	if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(p.dir, "rootfs.tar")
	if err := writeBusyboxRootfs(tarPath, busybox); err != nil {
		t.Fatal(err)
	}
	if out, err := p.run(nil, "", "import", tarPath, p.image); err != nil {
		t.Fatalf("podman import: %v: %s", err, out)
	}
	t.Cleanup(func() { p.run(nil, "", "rmi", "-f", p.image) })
	return p
}

// writeBusyboxRootfs writes a tar of a root file system with only the
// static busybox, its applets the test uses, and a page for httpd.
func writeBusyboxRootfs(path, busybox string) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin", "etc", "tmp", "www", "proc", "sys", "dev"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755})
	}
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))})
	tw.Write(bb)
	for _, applet := range []string{"sh", "httpd", "nc", "printf", "sleep", "ip", "cat"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777})
	}
	page := []byte("weft podman e2e\n")
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "www/index.html", Mode: 0o644, Size: int64(len(page))})
	tw.Write(page)
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// netConfDir is the CNI config dir of cell c: a conflist "weft" for its
// agent's socket.
func (p *podmanKit) netConfDir(t *testing.T, c *lab.Cell) string {
	t.Helper()
	dir := filepath.Join(p.dir, "net.d-"+c.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "weft",
  "plugins": [
    {"type": "weft-cni", "socket": %q, "capabilities": {"app": true, "io.kubernetes.cri.pod-annotations": true}}
  ]
}
`, c.Socket)
	if err := os.WriteFile(filepath.Join(dir, "weft.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// run runs podman with the test's storage and config, in network namespace
// ns ("" for the test's own), with extra environment env (podman passes
// CNI_ARGS of its environment on to the plugins). It returns the combined
// output.
func (p *podmanKit) run(env []string, ns string, args ...string) (string, error) {
	global := []string{"--root", filepath.Join(p.dir, "root"), "--runroot", filepath.Join(p.dir, "runroot"),
		"--tmpdir", filepath.Join(p.dir, "tmp"), "--storage-driver", "vfs"}
	if p.runtime != "" {
		global = append(global, "--runtime", p.runtime)
	}
	args = append(global, args...)
	var cmd *exec.Cmd
	if ns == "" {
		cmd = exec.Command(p.bin, args...)
	} else {
		cmd = lab.ExecIn(ns, p.bin, args...)
	}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "CNI_") && !strings.HasPrefix(e, "CONTAINERS_CONF=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, "CONTAINERS_CONF="+p.conf)
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		return out.String(), errors.Join(errors.New("podman timed out"), <-done)
	}
}

// onCell runs podman in cell c's namespace with c's CNI config dir.
func (p *podmanKit) onCell(t *testing.T, c *lab.Cell, env []string, args ...string) (string, error) {
	t.Helper()
	return p.run(env, c.Netns, append([]string{"--network-config-dir", p.netConfDir(t, c)}, args...)...)
}

// mustOnCell is onCell that fails the test on error.
func (p *podmanKit) mustOnCell(t *testing.T, c *lab.Cell, env []string, args ...string) string {
	t.Helper()
	out, err := p.onCell(t, c, env, args...)
	if err != nil {
		t.Fatalf("%s podman %s on %s: %v\n%s", strings.Join(env, " "), strings.Join(args, " "), c.Name(), err, out)
	}
	t.Logf("$ %s podman %s   (%s)\n%s", strings.Join(env, " "), strings.Join(args, " "), c.Name(), out)
	return out
}

// podmanIP is the overlay address of app on cell i, from `weft container
// list`; invalid if the cell has none.
func podmanIP(t *testing.T, l *lab.Lab, cell int, app string) netip.Addr {
	t.Helper()
	for _, v := range cellContainers(t, l, cell) {
		if a, ip, _ := strings.Cut(v, " "); a == app {
			return netip.MustParseAddr(ip)
		}
	}
	return netip.Addr{}
}

// TestPodman runs two podman containers from a locally imported busybox
// image on two cells, attached through weft-cni: the client reaches the
// server by overlay IP and by APP.apps.internal only after
// `weft add-network-policy`, and `podman rm` releases the server's address.
func TestPodman(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	k := newCNIKit(t)
	p := newPodmanKit(t, l, k.pluginDir)
	c1, _ := l.Cell(1)
	c2, _ := l.Cell(2)
	srv, cli := l.Name("pmserver"), l.Name("pmclient")
	t.Cleanup(func() {
		p.onCell(t, c1, nil, "rm", "-f", "-t", "0", srv, srv+"-2")
		p.onCell(t, c2, nil, "rm", "-f", "-t", "0", cli)
	})
	common := []string{"run", "-d", "--network", "weft", "--dns", "169.254.0.2",
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}

	// The server on cell 1 (app pmserver), the client on cell 2 (pmclient).
	p.mustOnCell(t, c1, []string{"CNI_ARGS=APP=pmserver"}, append(common, "--name", srv, p.image,
		"httpd", "-f", "-p", "8080", "-h", "/www")...)
	p.mustOnCell(t, c2, []string{"CNI_ARGS=APP=pmclient"}, append(common, "--name", cli, p.image,
		"sleep", "600")...)
	ipS := podmanIP(t, l, 1, "pmserver")
	if !ipS.IsValid() || !podmanIP(t, l, 2, "pmclient").IsValid() {
		t.Fatalf("cell 1 %v, cell 2 %v: want pmserver and pmclient attached", cellContainers(t, l, 1), cellContainers(t, l, 2))
	}

	// An HTTP GET with busybox nc (its wget crashes in this static build).
	get := func(host string) (string, error) {
		return p.onCell(t, c2, nil, "exec", cli, "sh", "-c",
			`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 `+host+` 8080`)
	}
	byName := "pmserver.apps.internal"
	for _, host := range []string{ipS.String(), byName} {
		out, err := get(host)
		if err == nil || !strings.Contains(out, "refused") {
			t.Fatalf("pmclient -> %s before any policy: err %v, said %q; want connection refused", host, err, out)
		}
		t.Logf("pmclient -> %s:8080 without policy: %s", host, strings.TrimSpace(out))
	}

	weft(t, l, 1, "add-network-policy", "pmclient", "pmserver", "--protocol", "tcp", "--port", "8080")
	start := time.Now()
	for _, host := range []string{ipS.String(), byName} {
		var out string
		waitFor(t, 10*time.Second, "pmclient -> "+host+":8080 after add-network-policy", func() bool {
			var err error
			out, err = get(host)
			return err == nil && strings.Contains(out, "weft podman e2e")
		})
		t.Logf("pmclient -> %s:8080 after add-network-policy (%v): %s", host, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	}

	// podman rm calls DEL: the address is unregistered and free again (the
	// next container gets it, being the lowest free one).
	p.mustOnCell(t, c1, nil, "rm", "-f", "-t", "0", srv)
	if ip := podmanIP(t, l, 1, "pmserver"); ip.IsValid() {
		t.Fatalf("after podman rm cell 1 still has pmserver at %v: %v", ip, cellContainers(t, l, 1))
	}
	p.mustOnCell(t, c1, []string{"CNI_ARGS=APP=pmserver2"}, append(common, "--name", srv+"-2", p.image, "sleep", "600")...)
	if ip := podmanIP(t, l, 1, "pmserver2"); ip != ipS {
		t.Fatalf("the next container on cell 1 got %v, want the released %v", ip, ipS)
	}
}
