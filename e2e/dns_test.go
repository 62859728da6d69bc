package e2e

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

const dnsAddr = "169.254.0.2:53"

// resolveIn looks name up with the cell DNS server, from inside namespace ns.
func resolveIn(ns, name string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return lab.DialIn(ns, network, dnsAddr, 2*time.Second)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	slices.Sort(addrs)
	return addrs, err
}

// waitResolve polls until name resolves to exactly want (sorted) from ns.
func waitResolve(t *testing.T, ns, name string, want ...string) {
	t.Helper()
	slices.Sort(want)
	var got []string
	var err error
	waitFor(t, 5*time.Second, name+" -> "+strings.Join(want, ","), func() bool {
		got, err = resolveIn(ns, name)
		if len(want) == 0 {
			var dnsErr *net.DNSError
			return errors.As(err, &dnsErr) && dnsErr.IsNotFound
		}
		return err == nil && slices.Equal(got, want)
	})
}

// curlIn runs curl inside ns the way an app would: `ip netns exec`, which
// shows the container its /etc/netns/ID/resolv.conf.
func curlIn(t *testing.T, ns, url string) (string, int) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "curl", "-sS", "-m", "3", url).CombinedOutput()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("curl in %s: %v", ns, err)
	}
	return string(out), code
}

// TestServiceDiscovery: APP.apps.internal resolves inside every container
// to the live instances of APP on any cell; resolving grants nothing.
func TestServiceDiscovery(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("curl is needed (.ci/run installs it): %v", err)
	}
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin, AgentArgs: []string{"--dns-upstream", "none"}})
	a, b1, b2 := l.Name("appA"), l.Name("appB-1"), l.Name("appB-2")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB1, err := l.CreateContainer(2, "appB", b1)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, b1, 8080)
	waitResolve(t, a, "appB.apps.internal.", ipB1.String())

	// Resolving grants nothing: refused (curl exit 7) until policy allows.
	if out, code := curlIn(t, a, "http://appB.apps.internal:8080/"); code != 7 {
		t.Fatalf("curl appB.apps.internal without policy: exit %d %q, want 7 (connection refused)", code, out)
	}
	weft(t, l, 1, "add-network-policy", "appA", "appB")
	waitFor(t, 5*time.Second, "curl appB.apps.internal:8080 with policy", func() bool {
		out, code := curlIn(t, a, "http://appB.apps.internal:8080/")
		return code == 0 && strings.HasPrefix(out, "hello from")
	})

	// A second instance on the other cell: both are answered.
	ipB2, err := l.CreateContainer(1, "appB", b2)
	if err != nil {
		t.Fatal(err)
	}
	waitResolve(t, a, "appB.apps.internal.", ipB1.String(), ipB2.String())
	waitResolve(t, a, b2+".appB.apps.internal.", ipB2.String())

	// An internal route mapped on one cell resolves on the others, and
	// unmapping it takes it away.
	weft(t, l, 2, "map-route", "appB", "apps.internal", "--hostname", "backend")
	waitResolve(t, a, "backend.apps.internal.", ipB1.String(), ipB2.String())
	if out := weft(t, l, 1, "routes"); !strings.Contains(out, "backend") {
		t.Fatalf("routes on cell 1:\n%s", out)
	}
	weft(t, l, 1, "unmap-route", "appB", "apps.internal", "--hostname", "backend")
	waitResolve(t, a, "backend.apps.internal.")
	if out, err := l.Weft(1, "unmap-route", "appB", "apps.internal", "--hostname", "backend"); err == nil || !strings.Contains(out, "Route does not exist.") {
		t.Fatalf("second unmap: %v %q", err, out)
	}

	// A removed instance disappears.
	if err := l.DeleteContainer(1, b2); err != nil {
		t.Fatal(err)
	}
	waitResolve(t, a, "appB.apps.internal.", ipB1.String())
	waitResolve(t, a, "nothing.apps.internal.") // NXDOMAIN

	// Other names: refused (no upstream configured), not a hang.
	if _, err := resolveIn(a, "example.com."); err == nil {
		t.Fatal("example.com resolved with --dns-upstream none")
	}
	// Only containers of the cell get answers: the cell itself does not.
	if addrs, err := resolveIn(l.Cells[0].Netns, "appB.apps.internal."); err == nil {
		t.Fatalf("the cell host resolved %v; only its containers may", addrs)
	}
}
