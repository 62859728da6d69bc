package e2e

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runWeft runs the built binary and returns its combined output and whether
// it exited 0.
func runWeft(t *testing.T, args ...string) (string, bool) {
	t.Helper()
	out, err := exec.Command(weftBin, args...).CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("run weft %v: %v", args, err)
		}
	}
	return string(out), err == nil
}

// TestCLIBadInput: every malformed command says what is wrong and exits
// non-zero. None of these reach an agent.
func TestCLIBadInput(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"add-network-policy", "a", "b", "--protocol", "tcp"}, "--protocol tcp needs --port"},
		{[]string{"add-network-policy", "a", "b", "--port", "80"}, "--port needs --protocol"},
		{[]string{"add-network-policy", "a", "b", "--protocol", "icmp", "--port", "80"}, "icmp rules take no ports"},
		{[]string{"add-network-policy", "a", "b", "-s", "prod"}, "-s prod needs -o ORG"},
		{[]string{"add-network-policy", "a", "b", "--protocol", "sctp", "--port", "80"}, "sctp"},
		{[]string{"add-network-policy", "a", "b", "--protocol", "tcp", "--port", "0"}, "--port"},
		{[]string{"add-network-policy", "a", "b", "--protocol", "tcp", "--port", "9000-8000"}, "9000-8000"},
		{[]string{"add-network-policy", "a", "b", "--protocol", "tcp", "--port", "70000"}, "70000"},
		{[]string{"add-network-policy", "a"}, "accepts 2 arg(s)"},
		{[]string{"remove-network-policy", "a", "b"}, "the required flag --protocol"},
		{[]string{"--socket", sock, "status"}, "no weft agent at " + sock},
		{[]string{"agent", "--name", "x", "--state-dir", t.TempDir(), "--bind", "127.0.0.1:0"}, "has no cluster.key: run `weft init"},
		{[]string{"agent", "--name", "x", "--state-dir", t.TempDir(), "--bind", "nonsense"}, `--bind "nonsense"`},
		{[]string{"init"}, `"state-dir" not set`},
	}
	for _, c := range cases {
		out, ok := runWeft(t, c.args...)
		if ok {
			t.Errorf("weft %v succeeded, want an error", c.args)
			continue
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("weft %v said %q, want it to mention %q", c.args, out, c.want)
		}
	}
}

// TestInitKeys: init makes 0600 keys, copies the cluster key, and refuses to
// overwrite a different one.
func TestInitKeys(t *testing.T) {
	d1, d2 := filepath.Join(t.TempDir(), "c1"), filepath.Join(t.TempDir(), "c2")
	if out, ok := runWeft(t, "init", "--state-dir", d1); !ok {
		t.Fatal(out)
	}
	for _, f := range []string{"cluster.key", "wireguard.key"} {
		fi, err := os.Stat(filepath.Join(d1, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	k1, _ := os.ReadFile(filepath.Join(d1, "cluster.key"))
	if len(k1) != 32 {
		t.Fatalf("cluster.key has %d bytes, want 32", len(k1))
	}
	if out, ok := runWeft(t, "init", "--state-dir", d2, "--cluster-key", filepath.Join(d1, "cluster.key")); !ok {
		t.Fatal(out)
	}
	k2, _ := os.ReadFile(filepath.Join(d2, "cluster.key"))
	if string(k1) != string(k2) {
		t.Fatal("cluster key not copied")
	}
	other := filepath.Join(t.TempDir(), "other")
	runWeft(t, "init", "--state-dir", other)
	out, ok := runWeft(t, "init", "--state-dir", d2, "--cluster-key", filepath.Join(other, "cluster.key"))
	if ok || !strings.Contains(out, "differs") {
		t.Fatalf("overwriting a different cluster key: ok=%v %q", ok, out)
	}
	if k3, _ := os.ReadFile(filepath.Join(d2, "cluster.key")); string(k3) != string(k1) {
		t.Fatal("a refused init changed the cluster key")
	}
}

// TestAgentSocketInUse: a second agent on a served socket refuses to start.
func TestAgentSocketInUse(t *testing.T) {
	dir := t.TempDir()
	runWeft(t, "init", "--state-dir", dir)
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out, ok := runWeft(t, "--socket", sock, "agent", "--name", "x", "--state-dir", dir, "--bind", "127.0.0.1:0")
	if ok || !strings.Contains(out, "already served by another agent") {
		t.Fatalf("agent on a served socket: ok=%v %q", ok, out)
	}
}

// TestAgentJoinRetries: a join address that never answers is retried with
// backoff, and the agent says so.
func TestAgentJoinRetries(t *testing.T) {
	dir := t.TempDir()
	runWeft(t, "init", "--state-dir", dir)
	l, err := net.Listen("tcp", "127.0.0.1:0") // a free port for gossip
	if err != nil {
		t.Fatal(err)
	}
	bind := l.Addr().String()
	l.Close()
	cmd := exec.Command(weftBin, "--socket", filepath.Join(dir, "api.sock"), "agent",
		"--name", "lonely", "--state-dir", dir, "--bind", bind, "--join", "127.0.0.1:9")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if line := sc.Text(); strings.Contains(line, "127.0.0.1:9") && strings.Contains(line, "retrying") {
				found <- line
				return
			}
		}
	}()
	select {
	case line := <-found:
		t.Logf("agent said: %s", line)
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not report a failing join with a retry")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
}
