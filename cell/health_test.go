package cell

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/buildinfo"
	"github.com/weft-net/weft/mesh"
)

// testVersion is the version testAgent announces.
const testVersion = "v0.0.1-test"

func testPub(t *testing.T) ed25519.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(b)
}

// TestHealthAndReadiness serves the metrics listener's handler on a real
// HTTP server: /healthz answers at once, /readyz only once the cell holds
// its lease and its data plane is up, and no more once it stops;
// /metrics has weft_build_info.
func TestHealthAndReadiness(t *testing.T) {
	a, _ := testAgent(t, nil, testPub(t))
	srv := httptest.NewServer(a.metricsHandler())
	defer srv.Close()

	if code, body := get(t, srv.URL+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: ") {
		t.Fatalf("/readyz before the data plane: %d %q", code, body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !a.mesh.Subnet().IsValid() {
		if time.Now().After(deadline) {
			t.Fatal("no lease after 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || body != "not ready: data plane not up yet\n" {
		t.Fatalf("/readyz with a lease, without a data plane: %d %q", code, body)
	}
	close(a.ready) // what startOverlay does once the data plane is up
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("/readyz when ready: %d %q", code, body)
	}
	_, metrics := get(t, srv.URL+"/metrics")
	want := fmt.Sprintf("weft_build_info{goversion=%q,version=\"v0.0.1-test\"} 1\n", buildinfo.GoVersion())
	if !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %q", want)
	}
	a.stopping.Store(true)
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || body != "not ready: stopping\n" {
		t.Fatalf("/readyz while stopping: %d %q", code, body)
	}
}

// TestStatusVersions: GET /v1/status names this agent's version, each
// member's version and features, and readiness.
func TestStatusVersions(t *testing.T) {
	a, c := testAgent(t, nil, testPub(t))
	close(a.ready)
	a.mesh.SetFeatures(mesh.FeatPartialTCPChecksum)
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "v0.0.1-test" || st.VersionWarning != "" {
		t.Errorf("status version %q, warning %q", st.Version, st.VersionWarning)
	}
	if len(st.Members) != 1 || st.Members[0].Version != testVersion ||
		fmt.Sprint(st.Members[0].Features) != "[partial_tcp_checksum]" {
		t.Errorf("members %+v", st.Members)
	}
	if st.Ready != (st.Subnet != "") {
		t.Errorf("ready %v (%q) with subnet %q", st.Ready, st.NotReady, st.Subnet)
	}
}

func TestVersionSkew(t *testing.T) {
	node := func(name, v string, st mesh.NodeState) mesh.Node {
		return mesh.Node{Name: name, Version: v, State: st}
	}
	same := []mesh.Node{node("c1", "v1", mesh.NodeAlive), node("c2", "v1", mesh.NodeSuspect), node("c3", "v0", mesh.NodeDead)}
	if s := versionSkew(same); s != "" {
		t.Errorf("one live version (a dead member on another): %q", s)
	}
	mixed := append(same, node("c4", "v2", mesh.NodeAlive), node("c5", "", mesh.NodeAlive))
	want := "members run different versions: unknown (older) (c5); v1 (c1, c2); v2 (c4)"
	if s := versionSkew(mixed); s != want {
		t.Errorf("skew %q, want %q", s, want)
	}

	var buf bytes.Buffer
	a := &Agent{cfg: Config{Version: "v1"}, log: slog.New(slog.NewTextHandler(&buf, nil))}
	for _, ms := range [][]mesh.Node{same, mixed, mixed, same} { // no second warning for the same skew
		a.applyLocked(desired{skew: versionSkew(ms)})
	}
	logs := buf.String()
	if n := strings.Count(logs, "level=WARN"); n != 1 || !strings.Contains(logs, want) {
		t.Errorf("want one warning naming the versions, got:\n%s", logs)
	}
	if !strings.Contains(logs, "all live members run one version again") {
		t.Errorf("no notice once the versions agree again:\n%s", logs)
	}
}

// TestSDNotify: READY=1 reaches the socket in $NOTIFY_SOCKET, a path or an
// abstract name; without it nothing is sent.
func TestSDNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := sdNotify("READY=1"); sent || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: sent %v, %v", sent, err)
	}
	for _, name := range []string{filepath.Join(t.TempDir(), "notify.sock"), fmt.Sprintf("@weft-test-notify-%d", time.Now().UnixNano())} {
		addr := name
		if addr[0] == '@' {
			addr = "\x00" + addr[1:]
		}
		ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", name)
		a := &Agent{log: slog.New(slog.DiscardHandler)}
		a.notifyReady(netip.MustParsePrefix("10.255.3.0/24"))
		ln.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 256)
		n, err := ln.Read(buf)
		ln.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := string(buf[:n]); got != "READY=1\nSTATUS=serving subnet 10.255.3.0/24" {
			t.Errorf("%s got %q", name, got)
		}
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
	if _, err := sdNotify("READY=1"); err == nil || !strings.Contains(err.Error(), "NOTIFY_SOCKET") {
		t.Errorf("a socket nobody listens on: %v", err)
	}
}
