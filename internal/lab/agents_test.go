package lab

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAgents drives the agent lifecycle against the fake weft binary.
func TestAgents(t *testing.T) {
	l := Setup(t, Config{Cells: 2, WeftBin: fakeWeftBin(t)})
	for _, c := range l.Cells {
		st, err := l.Status(c.Index)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("10.255.%d.0/24", c.Index); st.Name != c.Name() || st.Subnet != want {
			t.Fatalf("cell %d status %+v, want subnet %s", c.Index, st, want)
		}
		if c.PID() == 0 {
			t.Fatalf("cell %d has no pid", c.Index)
		}
	}
	// Cell 2 joined cell 1 over the underlay.
	if st, _ := l.Status(2); st.MemberState("c1") != "alive" {
		t.Fatalf("cell 2 members %+v", st.Members)
	}
	key1, _ := os.ReadFile(filepath.Join(l.Cells[0].StateDir, "cluster.key"))
	key2, _ := os.ReadFile(filepath.Join(l.Cells[1].StateDir, "cluster.key"))
	if len(key1) == 0 || !bytes.Equal(key1, key2) {
		t.Fatalf("cluster keys differ: %q %q", key1, key2)
	}

	// Containers made by the agent are visible as named namespaces.
	name := l.Name("appA")
	ip, err := l.CreateContainer(1, "appA", name)
	if err != nil || ip != netip.MustParseAddr("10.255.1.2") {
		t.Fatalf("CreateContainer: %v %v", ip, err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, name)); err != nil {
		t.Fatalf("container netns: %v", err)
	}
	if _, err := l.CreateContainer(1, "appA", name); err == nil {
		t.Fatal("duplicate container created")
	}
	name2 := l.Name("appB")
	if _, err := l.CreateContainer(2, "appB", name2); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteContainer(2, name2); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Weft(1, "bogus"); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("Weft bogus: %q %v", out, err)
	}

	// Stop, kill, restart.
	pid := l.Cells[1].PID()
	if err := l.StopCell(2); err != nil {
		t.Fatal(err)
	}
	if l.Cells[1].PID() != 0 || syscall.Kill(pid, 0) == nil {
		t.Fatalf("cell 2 agent %d still running", pid)
	}
	if err := l.StopCell(2); err == nil {
		t.Fatal("StopCell of a stopped cell succeeded")
	}
	if err := l.StartCell(2); err != nil {
		t.Fatal(err)
	}
	if err := l.KillCell(1); err != nil {
		t.Fatal(err)
	}
	uapi1 := filepath.Join(uapiDir, l.Cells[0].Interface+".sock")
	if _, err := os.Stat(uapi1); err != nil {
		t.Fatalf("the fake leaves its UAPI socket when killed: %v", err)
	}
	if err := l.StartCell(1); err != nil { // joins the running cell 2
		t.Fatal(err)
	}
	if st, _ := l.Status(1); st.MemberState("c2") != "alive" {
		t.Fatalf("restarted cell 1 members %+v", st.Members)
	}

	// A late cell.
	c3, err := l.AddCell()
	if err != nil {
		t.Fatal(err)
	}
	if c3.Index != 3 || c3.UnderlayIP.String() != "198.18.0.13" {
		t.Fatalf("added cell %+v", c3)
	}
	if st, _ := l.Status(3); st.Subnet != "10.255.3.0/24" || st.MemberState("c1") != "alive" {
		t.Fatalf("cell 3 status %+v", st)
	}

	var logs bytes.Buffer
	l.DumpLogs(&logs)
	if !strings.Contains(logs.String(), "fake agent c3 up") || !strings.Contains(logs.String(), "=== ") {
		t.Fatalf("DumpLogs:\n%s", logs.String())
	}

	pids := []int{l.Cells[0].PID(), l.Cells[1].PID(), c3.PID()}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("agent %d survived Close", pid)
		}
	}
	if got := runNetns(t, l.Run); len(got) != 0 {
		t.Fatalf("namespaces left after Close: %v", got)
	}
	if _, err := os.Stat(uapi1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left %s: %v", uapi1, err)
	}
}

// TestAgentFailsToStart checks that an agent dying early is reported with
// its log instead of waiting for the deadline.
func TestAgentFailsToStart(t *testing.T) {
	RequireRoot(t)
	start := time.Now()
	_, err := New(Config{Cells: 1, WeftBin: fakeWeftBin(t), Dir: t.TempDir(),
		AgentArgs: []string{"--no-such-flag"}, Logf: t.Logf})
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("New with a failing agent: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("failure took %v", time.Since(start))
	}
	if got := runNetns(t, RunPrefix()); len(got) != 0 {
		t.Fatalf("failed New left %v", got)
	}
}

// startHolder runs holdLab in a child process and returns it with its
// agents' pids once its lab is up.
func startHolder(t *testing.T) (*exec.Cmd, []int) {
	t.Helper()
	RequireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), fakeEnv+"=hold")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); CleanupStale(t.Logf) })
	line, _ := bufio.NewReader(out).ReadString('\n')
	var pids [2]int
	if _, err := fmt.Sscanf(line, "ready %d %d", &pids[0], &pids[1]); err != nil {
		t.Fatalf("holder said %q: %v", line, err)
	}
	return cmd, pids[:]
}

// waitGone waits until no process has id pid (it may be a zombie of a
// dead parent for a moment).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(stat), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSignalCleansUp(t *testing.T) {
	cmd, agents := startHolder(t)
	run := "wl" + strconv.Itoa(cmd.Process.Pid)
	if got := runNetns(t, run); len(got) != 3 {
		t.Fatalf("holder namespaces %v", got)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("holder exit %v, want death by SIGTERM", err)
	}
	if got := runNetns(t, run); len(got) != 0 {
		t.Fatalf("namespaces left after SIGTERM: %v", got)
	}
	for _, pid := range agents {
		waitGone(t, pid)
	}
}

func TestCrashLeavesOnlyStaleNamespaces(t *testing.T) {
	cmd, agents := startHolder(t)
	run := "wl" + strconv.Itoa(cmd.Process.Pid)
	cmd.Process.Kill()
	cmd.Wait()
	for _, pid := range agents {
		waitGone(t, pid) // Pdeathsig
	}
	if got := runNetns(t, run); len(got) != 3 {
		t.Fatalf("namespaces of the crashed run: %v", got)
	}
	if err := CleanupStale(t.Logf); err != nil {
		t.Fatal(err)
	}
	if got := runNetns(t, run); len(got) != 0 {
		t.Fatalf("stale cleanup left %v", got)
	}
	if m, _ := filepath.Glob(filepath.Join(uapiDir, run+"c*.sock")); len(m) != 0 {
		t.Fatalf("stale cleanup left %v", m)
	}
	if m, _ := filepath.Glob(filepath.Join(os.TempDir(), run+"-*")); len(m) != 0 {
		t.Fatalf("stale cleanup left %v", m)
	}
}

// TestRealWeft is a smoke test of the lab with a built weft binary, run
// when WEFT_BIN names one: cells lease distinct subnets, see each other,
// and containers get addresses from their cell's subnet.
func TestRealWeft(t *testing.T) {
	bin := os.Getenv("WEFT_BIN")
	if bin == "" {
		t.Skip("set WEFT_BIN to a built weft binary")
	}
	l := Setup(t, Config{Cells: 2, WeftBin: bin})
	var subnets []netip.Prefix
	for _, c := range l.Cells {
		st, err := l.Status(c.Index)
		if err != nil {
			t.Fatal(err)
		}
		p, err := netip.ParsePrefix(st.Subnet)
		if err != nil {
			t.Fatalf("cell %d subnet %q: %v", c.Index, st.Subnet, err)
		}
		subnets = append(subnets, p)
	}
	if subnets[0] == subnets[1] {
		t.Fatalf("both cells leased %v", subnets[0])
	}
	// The cells find each other as members and WireGuard peers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := l.Status(1)
		if err == nil && st.MemberState("c2") != "" && len(st.Peers) == 1 && st.Peers[0].PublicKey != "" {
			t.Logf("cell 1: members %+v, peer %s at %s", st.Members, st.Peers[0].PublicKey, st.Peers[0].Endpoint)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cell 1 does not see cell 2: %v %s", err, st.Raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ip, err := l.CreateContainer(1, "appA", l.Name("appA"))
	if err != nil {
		t.Fatal(err)
	}
	if !subnets[0].Contains(ip) {
		t.Fatalf("container IP %v outside cell 1 subnet %v", ip, subnets[0])
	}
	if _, err := os.Stat(filepath.Join(netnsDir, l.Name("appA"))); err != nil {
		t.Fatalf("container netns not visible: %v", err)
	}
	if err := l.DeleteContainer(1, l.Name("appA")); err != nil {
		t.Fatal(err)
	}
}
