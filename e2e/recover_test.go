package e2e

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/internal/lab"
)

// TestRecoverContainersWithoutState: `rm state.json` and a restart do not
// forget the containers whose namespaces and veths are still there: the
// agent rebuilds their registration from the kernel (the delivery routes
// and the veths' labels), so they are listed with app and IP, policy
// reaches them, delete works, and their addresses are not handed out again.
func TestRecoverContainersWithoutState(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	a, b, b2 := l.Name("appA"), l.Name("appB"), l.Name("appB2")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	ipB2, err := l.CreateContainer(2, "appB2", b2)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, b, 8080)
	serveHTTP(t, b2, 8080)

	if err := l.StopCell(2); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(l.Cells[1].StateDir, "state.json")); err != nil {
		t.Fatal(err)
	}
	if err := l.StartCell(2); err != nil {
		t.Fatal(err)
	}

	var list []struct{ Name, App, IP string }
	if err := json.Unmarshal([]byte(weft(t, l, 2, "container", "list", "--output", "json")), &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range list {
		got[c.Name] = c.App + " " + c.IP
	}
	want := map[string]string{b: "appB " + ipB.String(), b2: "appB2 " + ipB2.String()}
	if len(got) != len(want) || got[b] != want[b] || got[b2] != want[b2] {
		t.Fatalf("containers after restart without state.json: %v, want %v", got, want)
	}

	// Policy (the old one went with state.json) reaches the recovered
	// container from the other cell, and only the app it names.
	weft(t, l, 1, "add-network-policy", "appA", "appB")
	expectHTTP(t, a, ipB, 8080)
	expectRefused(t, a, ipB2, 8080)

	// A new container gets an address of its own.
	c := l.Name("appC")
	ipC, err := l.CreateContainer(2, "appC", c)
	if err != nil {
		t.Fatal(err)
	}
	if ipC == ipB || ipC == ipB2 {
		t.Fatalf("new container got %v, in use by %s (%v) / %s (%v)", ipC, b, ipB, b2, ipB2)
	}

	// Delete knows the recovered container.
	if err := l.DeleteContainer(2, b2); err != nil {
		t.Fatalf("delete recovered container: %v", err)
	}
	if out := weft(t, l, 2, "container", "list"); strings.Contains(out, b2) {
		t.Fatalf("%s still listed after delete:\n%s", b2, out)
	}
}

// TestNoReuseOfRoutedAddress: an address still routed to a veth is never
// handed out again, even when the veth has no label (made by an older
// agent, or its label was lost) and so cannot be registered.
func TestNoReuseOfRoutedAddress(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 1, WeftBin: weftBin})
	x := l.Name("appX")
	ipX, err := l.CreateContainer(1, "appX", x)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.StopCell(1); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(l.Cells[0].StateDir, "state.json")); err != nil {
		t.Fatal(err)
	}
	// Remove the label: the container cannot be recovered, but its
	// address is still taken.
	veth := attach.HostVethName(x)
	if out, err := exec.Command("ip", "netns", "exec", l.Cells[0].Netns, "ip", "link", "set", "dev", veth, "alias", "").CombinedOutput(); err != nil {
		t.Fatalf("clear alias: %v: %s", err, out)
	}
	if err := l.StartCell(1); err != nil {
		t.Fatal(err)
	}
	y := l.Name("appY")
	ipY, err := l.CreateContainer(1, "appY", y)
	if err != nil {
		t.Fatal(err)
	}
	if ipY == ipX {
		t.Fatalf("new container got %v, still routed to %s", ipY, x)
	}
	if !netip.MustParsePrefix("10.255.0.0/16").Contains(ipY) {
		t.Fatalf("odd address %v", ipY)
	}
}
