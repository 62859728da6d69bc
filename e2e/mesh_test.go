package e2e

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// The control plane under failures (issue 4): restarts, SIGKILL, graceful
// stops, partitions, concurrent policy changes and operator signatures, on
// the netns lab with real agents.

// waitStatus polls cell i's status until cond holds and returns how long it
// took.
func waitStatus(t *testing.T, l *lab.Lab, i int, timeout time.Duration, what string, cond func(lab.Status) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var last lab.Status
	var lastErr error
	for {
		st, err := l.Status(i)
		if err == nil && cond(st) {
			return time.Since(start)
		}
		last, lastErr = st, err
		if time.Since(start) > timeout {
			t.Fatalf("cell %d: %s: not after %v (err %v, status %s)", i, what, timeout, lastErr, last.Raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCellFailures: a gracefully stopped cell leaves at once; a restarted
// cell keeps its subnet and traffic to its containers resumes; a cell
// killed with SIGKILL is removed as a WireGuard peer within 10 s, and comes
// back the same way.
func TestCellFailures(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	a, b := l.Name("appA"), l.Name("appB")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, b, 8080) // the server lives in appB's netns: it outlives the agent
	weft(t, l, 1, "add-network-policy", "appA", "appB")
	expectHTTP(t, a, ipB, 8080)
	st2, err := l.Status(2)
	if err != nil {
		t.Fatal(err)
	}
	subnet := st2.Subnet

	// Graceful stop: cell 1 sees c2 left and drops its peer at once.
	if err := l.StopCell(2); err != nil {
		t.Fatal(err)
	}
	took := waitStatus(t, l, 1, 5*time.Second, "c2 left and its peer removed", func(st lab.Status) bool {
		return st.MemberState("c2") == "left" && len(st.Peers) == 0
	})
	t.Logf("graceful stop: peer removed on cell 1 after %v", took)

	restart := func() {
		t.Helper()
		if err := l.StartCell(2); err != nil {
			t.Fatal(err)
		}
		st, err := l.Status(2)
		if err != nil {
			t.Fatal(err)
		}
		if st.Subnet != subnet {
			t.Fatalf("restarted cell 2 has subnet %s, want %s", st.Subnet, subnet)
		}
		took := expectHTTP(t, a, ipB, 8080)
		t.Logf("restart: traffic to the surviving container resumed %v after the agent had its lease", took)
	}
	restart()

	// SIGKILL: no leave message; cell 1 must notice by itself.
	if err := l.KillCell(2); err != nil {
		t.Fatal(err)
	}
	took = waitStatus(t, l, 1, 10*time.Second, "c2 dead and its peer removed", func(st lab.Status) bool {
		return st.MemberState("c2") == "dead" && len(st.Peers) == 0
	})
	t.Logf("SIGKILL: WireGuard peer removed on cell 1 after %v (target < 10s)", took)
	restart()
}

// TestPartitionHeals: a cell cut off the underlay is declared dead on both
// sides; once the link is back the mesh heals by itself.
func TestPartitionHeals(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 3, WeftBin: weftBin})
	a, b := l.Name("appA"), l.Name("appB")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(3, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, b, 8080)
	weft(t, l, 2, "add-network-policy", "appA", "appB")
	expectHTTP(t, a, ipB, 8080)

	if err := l.SetLink(3, false); err != nil {
		t.Fatal(err)
	}
	linkBack := false
	defer func() {
		if !linkBack {
			l.SetLink(3, true)
		}
	}()
	took := waitStatus(t, l, 1, 15*time.Second, "c3 dead on cell 1", func(st lab.Status) bool {
		return st.MemberState("c3") == "dead" && len(st.Peers) == 1
	})
	t.Logf("partition: c3 declared dead on cell 1 after %v", took)
	took += waitStatus(t, l, 3, 15*time.Second, "c1 and c2 dead on cell 3", func(st lab.Status) bool {
		return st.MemberState("c1") == "dead" && st.MemberState("c2") == "dead"
	})
	t.Logf("partition: c1 and c2 declared dead on the isolated cell 3 after %v", took)
	// A change made while the partition lasts reaches the cut-off cell
	// after the heal.
	weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "9090")

	if err := l.SetLink(3, true); err != nil {
		t.Fatal(err)
	}
	linkBack = true
	took = waitStatus(t, l, 1, 20*time.Second, "c3 alive again with a peer", func(st lab.Status) bool {
		return st.MemberState("c3") == "alive" && len(st.Peers) == 2
	})
	t.Logf("heal: c3 alive again on cell 1 after %v", took)
	waitStatus(t, l, 3, 20*time.Second, "cell 3 sees everyone and the new rule", func(st lab.Status) bool {
		return st.MemberState("c1") == "alive" && st.MemberState("c2") == "alive" && len(st.Peers) == 2
	})
	waitFor(t, 10*time.Second, "rule made during the partition on cell 3", func() bool {
		out, err := l.Weft(3, "network-policies")
		return err == nil && strings.Contains(out, "9090")
	})
	t.Logf("heal: HTTP across the healed link after %v", expectHTTP(t, a, ipB, 8080))
}

// TestConcurrentPolicyChanges: changes made at the same moment on two cells
// both survive on every cell.
func TestConcurrentPolicyChanges(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			_, errs[i] = l.Weft(i+1, "add-network-policy", fmt.Sprintf("src%d", i+1), "dst", "--protocol", "tcp", "--port", "80")
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 2; i++ {
		waitFor(t, 5*time.Second, fmt.Sprintf("both rules on cell %d", i), func() bool {
			out, err := l.Weft(i, "network-policies")
			return err == nil && strings.Contains(out, "src1") && strings.Contains(out, "src2")
		})
	}
}

// weftEnv runs the CLI in cell i's namespace with exactly the given
// WEFT_OPERATOR_KEY (empty: none), and returns its output and error.
func weftEnv(t *testing.T, l *lab.Lab, i int, key string, args ...string) (string, error) {
	t.Helper()
	c, err := l.Cell(i)
	if err != nil {
		t.Fatal(err)
	}
	cmd := lab.ExecIn(c.Netns, weftBin, append([]string{"--socket", c.Socket}, args...)...)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "WEFT_OPERATOR_KEY=") {
			env = append(env, e)
		}
	}
	if key != "" {
		env = append(env, "WEFT_OPERATOR_KEY="+key)
	}
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestPolicySignatures: a change signed with a key the cells do not trust
// is refused with a clear error and counted; without a key, only a cell
// whose state dir holds the operator key signs for the CLI.
func TestPolicySignatures(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	c1, _ := l.Cell(1)
	c2, _ := l.Cell(2)
	if _, err := os.Stat(filepath.Join(c2.StateDir, "operator.key")); err == nil {
		t.Fatal("cell 2 (initialised with --cluster-key) holds an operator key")
	}
	pub1, err := os.ReadFile(filepath.Join(c1.StateDir, "operators.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if pub2, _ := os.ReadFile(filepath.Join(c2.StateDir, "operators.pub")); !bytes.Equal(pub1, pub2) {
		t.Fatalf("cell 2 trusts %q, want cell 1's %q", pub2, pub1)
	}

	// An untrusted key.
	_, stranger, _ := ed25519.GenerateKey(nil)
	bad := filepath.Join(t.TempDir(), "stranger.key")
	if err := os.WriteFile(bad, []byte(base64.StdEncoding.EncodeToString(stranger.Seed())), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := weftEnv(t, l, 2, "", "add-network-policy", "evil", "appB", "--operator-key", bad)
	if err == nil || !strings.Contains(out, "policy change refused: signed by an untrusted key") {
		t.Fatalf("untrusted key: err %v, output %q", err, out)
	}
	t.Logf("untrusted key: %s", strings.TrimSpace(out))
	// No key: cell 2 cannot sign, cell 1 (which holds operator.key) can.
	out, err = weftEnv(t, l, 2, "", "add-network-policy", "appA", "appB")
	if err == nil || !strings.Contains(out, "holds no operator key") {
		t.Fatalf("cell 2 without a key: err %v, output %q", err, out)
	}
	if out, err := weftEnv(t, l, 1, "", "add-network-policy", "appA", "appB"); err != nil {
		t.Fatalf("cell 1 signing for the CLI: %v: %s", err, out)
	}
	waitFor(t, 5*time.Second, "agent-signed rule on cell 2", func() bool {
		out, err := l.Weft(2, "network-policies")
		return err == nil && strings.Contains(out, "appA") && !strings.Contains(out, "evil")
	})
	// Removal with the exported key; a second removal says it is gone.
	weft(t, l, 2, "remove-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	if out, err := l.Weft(2, "remove-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080"); err != nil || !strings.Contains(out, "Policy does not exist.\nOK\n") {
		t.Fatalf("second signed removal: %v %q; want 'Policy does not exist.' then OK, and success", err, out)
	}
	st, err := l.Status(2)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Rejected uint64 `json:"rejected_policy_changes"`
	}
	if err := json.Unmarshal(st.Raw, &raw); err != nil || raw.Rejected == 0 {
		t.Fatalf("rejected_policy_changes = %d (%v), want > 0", raw.Rejected, err)
	}
}
