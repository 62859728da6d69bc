package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// portmapPlugin finds the standard portmap CNI plugin (Debian's
// containernetworking-plugins, which .ci/run installs).
func portmapPlugin(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/lib/cni/portmap", "/opt/cni/bin/portmap"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("the portmap CNI plugin is not installed (apt-get install containernetworking-plugins)")
	return ""
}

// TestIngress is issue 23's ingress story. A container of app web on cell
// 1, attached by cnitool with portmap chained after weft-cni, publishes
// container port 8080 as host port 18080. A request from cell 2's host to
// cell 1's host port is refused before an ingress rule, reaches the
// container with `add-ingress-rule web --source 198.18.0.0/24`, and is
// refused again after its removal, an open connection included. Cell 1's
// host reaches the container only with a --from-host rule.
func TestIngress(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	k := newCNIKit(t)
	if err := os.Symlink(portmapPlugin(t), filepath.Join(k.pluginDir, "portmap")); err != nil {
		t.Fatal(err)
	}
	c1, _ := l.Cell(1)
	c2, _ := l.Cell(2)
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "weft", "plugins": [
  {"type": "weft-cni", "socket": %q, "capabilities": {"app": true}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}`, c1.Socket)
	if err := os.WriteFile(filepath.Join(k.confDir, "weft.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := lab.ExecIn(c1.Netns, "nft", "list", "ruleset").CombinedOutput()
			t.Logf("cell 1 nftables:\n%s", out)
		}
	})
	nsPath := addNetns(t, l, "web")
	ns := filepath.Base(nsPath)
	capArgs := `CAP_ARGS={"portMappings":[{"hostPort":18080,"containerPort":8080,"protocol":"tcp"}]}`
	out := k.must(t, l, 1, []string{"CNI_ARGS=APP=web", capArgs}, "add", "weft", nsPath)
	t.Cleanup(func() { k.run(l, 1, []string{"CNI_ARGS=APP=web", capArgs}, "del", "weft", nsPath) })
	var res cniResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("cnitool add printed %q: %v", out, err)
	}
	ipWeb := netip.MustParsePrefix(res.IPs[0].Address).Addr()
	serveHTTP(t, ns, 8080)

	hostPort := url(c1.UnderlayIP, 18080)
	get := func(from string, target string) (int, error) {
		code, _, err := lab.HTTPGetIn(from, target, 2*time.Second)
		return code, err
	}
	// Before a rule: refused at once (not a hang), counted as ingress.
	if code, err := get(c2.Netns, hostPort); !lab.IsConnRefused(err) {
		t.Fatalf("cell 2 -> cell 1's host port without a rule: %d %v; want connection refused", code, err)
	}
	if n := verdict(t, l, 1, "ingress"); n == 0 {
		t.Errorf("cell 1 counted no ingress refusal")
	}
	if n := verdict(t, l, 1, "spoofed"); n != 0 {
		t.Errorf("cell 1 counted %d spoofed packets; traffic from outside the overlay is not spoofing", n)
	}

	rule := []string{"web", "--protocol", "tcp", "--port", "8080", "--source", "198.18.0.0/24"}
	added := time.Now()
	weft(t, l, 2, append([]string{"add-ingress-rule"}, rule...)...)
	waitFor(t, 2*time.Second, "200 through the host port after add-ingress-rule", func() bool {
		code, err := get(c2.Netns, hostPort)
		return err == nil && code == 200
	})
	t.Logf("host port reachable %v after add-ingress-rule (made on cell 2) returned", time.Since(added).Round(time.Millisecond))
	if n := verdict(t, l, 1, "ingress_accepted"); n == 0 {
		t.Errorf("cell 1 counted no ingress_accepted packet")
	}

	// An open connection, then the rule's removal: refused, and cut.
	conn, err := lab.DialIn(c2.Netns, "tcp", netip.AddrPortFrom(c1.UnderlayIP, 18080).String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	request := keepAliveRequest(conn)
	if err := request(); err != nil {
		t.Fatalf("request on the open connection: %v", err)
	}
	weft(t, l, 1, append([]string{"remove-ingress-rule"}, rule...)...)
	waitFor(t, 2*time.Second, "refused after remove-ingress-rule", func() bool {
		_, err := get(c2.Netns, hostPort)
		return lab.IsConnRefused(err)
	})
	if err := request(); err == nil {
		t.Errorf("the open connection still carries requests after the rule's removal")
	}

	// The cell host itself: only with a --from-host rule.
	if code, err := get(c1.Netns, url(ipWeb, 8080)); !lab.IsConnRefused(err) {
		t.Fatalf("cell 1 host -> its container without a rule: %d %v; want connection refused", code, err)
	}
	weft(t, l, 1, "add-ingress-rule", "web", "--protocol", "tcp", "--port", "8080", "--from-host")
	waitFor(t, 2*time.Second, "cell 1 host -> its container after --from-host", func() bool {
		code, err := get(c1.Netns, url(ipWeb, 8080))
		return err == nil && code == 200
	})
	if list := weft(t, l, 1, "ingress-rules"); !strings.Contains(list, "(cell hosts)") {
		t.Errorf("ingress-rules does not list the from-host rule:\n%s", list)
	}
}

// keepAliveRequest returns a function that sends a GET on conn and reads
// the answer (HTTP keep-alive: the connection stays open between calls).
func keepAliveRequest(conn net.Conn) func() error {
	br := bufio.NewReader(conn)
	return func() error {
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
			return err
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return err
	}
}
