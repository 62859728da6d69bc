package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// TestPolicyPushExportAndFlowLogs: a policy file replaces the whole set
// declaratively (with a dry run first), a bad file changes nothing, export
// gives back what was pushed, flow logs name the apps of a denied
// connection, and policy enforcement switches off and on at run time.
func TestPolicyPushExportAndFlowLogs(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	a, b := l.Name("appA"), l.Name("appB")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, b, 8080)
	serveHTTP(t, b, 9001)
	weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	waitFor(t, 5*time.Second, "the policy on cell 2", func() bool {
		out, err := l.Weft(2, "network-policies")
		return err == nil && strings.Contains(out, "8080")
	})

	dir := t.TempDir()
	file := filepath.Join(dir, "policies.yaml")
	os.WriteFile(file, []byte(`policies:
  - {source: appA, destination: appB, protocol: tcp, ports: "9000-9010"}
  - {source: appB, destination: appA, protocol: udp, ports: "53"}
`), 0o644)

	out := weft(t, l, 2, "policy", "push", file, "--dry-run")
	for _, want := range []string{"- appA -> appB tcp 8080", "+ appA -> appB tcp 9000-9010", "+ appB -> appA udp 53", "nothing changed",
		"removes 1 of the 1 policies", "--allow-large-removal"} {
		if !strings.Contains(out, want) {
			t.Fatalf("dry run output lacks %q:\n%s", want, out)
		}
	}
	expectHTTP(t, a, ipB, 8080) // the dry run changed nothing

	// A bad file: error names file, line and field; nothing changes.
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("policies:\n  - {source: appA, destination: appB, protocol: tcp, ports: \"9000-80\"}\n"), 0o644)
	if out, err := l.Weft(2, "policy", "push", bad); err == nil || !strings.Contains(out, "bad.yaml:2") || !strings.Contains(out, "ports") {
		t.Fatalf("bad file: err %v, output %q; want an error naming bad.yaml:2 and ports", err, out)
	}
	if list := weft(t, l, 1, "network-policies"); !strings.Contains(list, "8080") {
		t.Fatalf("a bad file changed the policies:\n%s", list)
	}

	// It removes the only rule: refused without --allow-large-removal.
	if out, err := l.Weft(2, "policy", "push", file); err == nil || !strings.Contains(out, "--allow-large-removal") {
		t.Fatalf("push removing 1 of 1: err %v, output %q; want refused naming --allow-large-removal", err, out)
	}
	weft(t, l, 2, "policy", "push", file, "--allow-large-removal")
	waitRefused(t, a, ipB, 8080)
	expectHTTP(t, a, ipB, 9001)

	// Export gives back the pushed set, in both formats, on any cell once
	// gossip has carried it there.
	waitFor(t, 5*time.Second, "the pushed set on cell 1", func() bool {
		out, err := l.Weft(1, "network-policies")
		return err == nil && !strings.Contains(out, "8080") && strings.Contains(out, "9000-9010") && strings.Contains(out, "53")
	})
	var exported struct {
		Policies []struct {
			Source      struct{ ID string } `json:"source"`
			Destination struct {
				ID       string `json:"id"`
				Protocol string `json:"protocol"`
				Ports    struct{ Start, End int }
			} `json:"destination"`
		} `json:"policies"`
	}
	if err := json.Unmarshal([]byte(weft(t, l, 1, "policy", "export", "--format", "cf-json")), &exported); err != nil {
		t.Fatal(err)
	}
	if len(exported.Policies) != 2 {
		t.Fatalf("cf-json export has %d policies, want 2: %+v", len(exported.Policies), exported)
	}
	yamlOut := weft(t, l, 1, "policy", "export")
	again := filepath.Join(dir, "again.yaml")
	os.WriteFile(again, []byte(yamlOut), 0o644)
	if out := weft(t, l, 1, "policy", "push", again, "--dry-run"); !strings.Contains(out, "0 to add, 0 to remove") {
		t.Fatalf("pushing the export is not a no-op:\n%s", out)
	}

	// Flow logs: a denied connection is logged with both apps.
	weft(t, l, 2, "flow-logs", "on")
	if out := weft(t, l, 2, "flow-logs", "status"); !strings.Contains(out, "on") {
		t.Fatalf("flow-logs status: %q", out)
	}
	expectRefused(t, a, ipB, 8080)
	waitFor(t, 5*time.Second, "a flow log line for the denied connection", func() bool {
		log, _ := os.ReadFile(l.Cells[1].LogPath)
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, `"verdict":"no_policy"`) && strings.Contains(line, `"source_app":"appA"`) &&
				strings.Contains(line, `"destination_app":"appB"`) && strings.Contains(line, ":8080") {
				return true
			}
		}
		return false
	})
	weft(t, l, 2, "flow-logs", "off")

	// Enforcement switched off on cell 2 lets the denied connection
	// through (and says so everywhere); on again, the connection opened
	// meanwhile is cut on its next packet and new ones are refused.
	if out := weft(t, l, 2, "policy-enforcement", "status"); !strings.Contains(out, "policy enforcement: on") {
		t.Fatalf("policy-enforcement status: %q", out)
	}
	if out := weft(t, l, 2, "policy-enforcement", "off"); !strings.Contains(out, "OFF") {
		t.Fatalf("policy-enforcement off: %q", out)
	}
	expectHTTP(t, a, ipB, 8080)
	open, err := lab.DialIn(a, "tcp", netip.AddrPortFrom(ipB, 8080).String(), 3*time.Second)
	if err != nil {
		t.Fatalf("connect with enforcement off: %v", err)
	}
	defer open.Close()
	if on := enforced(t, l, 2); on {
		t.Fatal("status says policy_enforced with enforcement off")
	}
	if out := weft(t, l, 2, "status"); !strings.Contains(out, "enforced:   OFF") {
		t.Fatalf("weft status does not say enforcement is off:\n%s", out)
	}
	if _, err := l.Weft(2, "policy-enforcement", "maybe"); err == nil {
		t.Fatal("policy-enforcement maybe: no error")
	}
	weft(t, l, 2, "policy-enforcement", "on")
	if err := expectCut(open); err != nil {
		t.Fatal(err)
	}
	expectRefused(t, a, ipB, 8080)
	expectHTTP(t, a, ipB, 9001)
	if on := enforced(t, l, 2); !on {
		t.Fatal("status does not say policy_enforced with enforcement on again")
	}
}

// enforced is the policy_enforced field of the cell's status.
func enforced(t *testing.T, l *lab.Lab, cell int) bool {
	t.Helper()
	st, err := l.Status(cell)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		On *bool `json:"policy_enforced"`
	}
	if err := json.Unmarshal(st.Raw, &f); err != nil || f.On == nil {
		t.Fatalf("status of cell %d has no policy_enforced (%v): %s", cell, err, st.Raw)
	}
	return *f.On
}

// TestPolicyPushKeepsLiveFlow: a push that replaces the rule tcp 8082 by
// 8081-8090 (no operator key: the agent signs) keeps a TCP connection on
// 8082 that carries traffic all along (issue 22, item 9: the removal was
// applied before the addition and the connection was reset).
func TestPolicyPushKeepsLiveFlow(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	a, b := l.Name("appA"), l.Name("appB")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := lab.ListenIn(b, "tcp", ":8082")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // echo
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	dir := t.TempDir()
	push := func(name, ports string) {
		t.Helper()
		file := filepath.Join(dir, name)
		os.WriteFile(file, []byte(`policies:
  - {source: appA, destination: appB, protocol: tcp, ports: "`+ports+`"}
  - {source: appA, destination: appB, protocol: udp, ports: "53"}
  - {source: appB, destination: appA, protocol: tcp, ports: "80"}
`), 0o644)
		weft(t, l, 1, "policy", "push", file)
	}
	push("old.yaml", "8082")
	var conn net.Conn
	waitFor(t, 5*time.Second, "a connection to appB:8082", func() bool {
		conn, err = lab.DialIn(a, "tcp", netip.AddrPortFrom(ipB, 8082).String(), time.Second)
		return err == nil
	})
	defer conn.Close()

	// Traffic all along: a line out and back every few ms.
	stop, done := make(chan struct{}), make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			msg := fmt.Sprintf("%08d\n", i)
			if _, err := conn.Write([]byte(msg)); err != nil {
				done <- fmt.Errorf("write %d: %w", i, err)
				return
			}
			if _, err := io.ReadFull(conn, buf[:len(msg)]); err != nil || string(buf[:len(msg)]) != msg {
				done <- fmt.Errorf("echo %d: %q, %v", i, buf[:len(msg)], err)
				return
			}
			time.Sleep(2 * time.Millisecond) // pacing, not synchronisation
		}
	}()
	for i := range 3 { // replace and back: each direction is a replacement
		push(fmt.Sprintf("new%d.yaml", i), "8081-8090")
		waitFor(t, 5*time.Second, "8081-8090 on cell 2", func() bool {
			out, err := l.Weft(2, "network-policies")
			return err == nil && strings.Contains(out, "8081-8090")
		})
		push(fmt.Sprintf("old%d.yaml", i), "8082")
		waitFor(t, 5*time.Second, "8082 again on cell 2", func() bool {
			out, err := l.Weft(2, "network-policies")
			return err == nil && !strings.Contains(out, "8081-8090")
		})
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("the connection on 8082 did not survive the pushes: %v", err)
	}
}
