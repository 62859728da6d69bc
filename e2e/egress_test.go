package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// TestEgress is issue 23's egress story: a container on cell 1 fetches from
// an HTTP server on the underlay ("the internet", outside the overlay). It
// is refused at once before a rule, gets 200 (from the cell's underlay
// address: NAT) within a second of add-egress-rule, is refused again after
// remove-egress-rule, and a connection opened under the rule is cut.
func TestEgress(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 1, WeftBin: weftBin})
	c1, _ := l.Cell(1)
	inetIP := netip.MustParseAddr("198.18.0.2")
	inet, err := l.AddUnderlayHost(inetIP)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := lab.ListenIn(inet, "tcp", ":8088")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "from %s\n", host)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	ctA := l.Name("a")
	createContainer(t, l, 1, "appA", ctA)
	target := url(inetIP, 8088)
	get := func() (int, string, error) { return lab.HTTPGetIn(ctA, target, 2*time.Second) }

	// Before a rule: refused at once, counted as egress.
	if code, _, err := get(); err == nil || !lab.IsConnRefused(err) {
		t.Fatalf("container -> internet without a rule: %d %v; want connection refused", code, err)
	}
	if n := verdict(t, l, 1, "egress"); n == 0 {
		t.Errorf("cell 1 counted no egress denial")
	}
	// The refusal in the flow log (the kernel's NFLOG record), through
	// `weft flow-logs tail`: dial again until the tail, connected
	// asynchronously, shows one.
	lines := tailFlowLogs(t, l, 1, "--app", "appA")
	flowOf := func(what string, want map[string]string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			get()
			for drained := false; !drained; {
				select {
				case m := <-lines:
					match := true
					for k, v := range want {
						match = match && m[k] == v
					}
					if match {
						t.Logf("%s: %v", what, m)
						return
					}
				case <-time.After(300 * time.Millisecond):
					drained = true
				}
			}
		}
		t.Errorf("no flow-log line for the %s with %v within 10 s", what, want)
	}
	flowOf("refused egress", map[string]string{"verdict": "egress", "direction": "outbound", "protocol": "tcp",
		"source_app": "appA", "destination": "198.18.0.2:8088"})

	rule := []string{"appA", "--destination", "198.18.0.0/29", "--protocol", "tcp", "--port", "8088"}
	added := time.Now()
	weft(t, l, 1, append([]string{"add-egress-rule"}, rule...)...)
	var body string
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := lab.ExecIn(c1.Netns, "nft", "list", "ruleset").CombinedOutput()
			t.Logf("cell 1 nftables:\n%s", out)
		}
	})
	waitFor(t, time.Second, "200 from the internet after add-egress-rule", func() bool {
		code, b, err := get()
		body = b
		return err == nil && code == 200
	})
	t.Logf("egress allowed %v after add-egress-rule returned", time.Since(added).Round(time.Millisecond))
	if want := "from " + c1.UnderlayIP.String(); strings.TrimSpace(body) != want {
		t.Errorf("server saw %q, want %q (masquerade to the cell's underlay address)", strings.TrimSpace(body), want)
	}
	if out := weft(t, l, 1, "egress-rules"); !strings.Contains(out, "appA") || !strings.Contains(out, "198.18.0.0/29") {
		t.Errorf("egress-rules does not list the rule:\n%s", out)
	}
	if n := verdict(t, l, 1, "egress_accepted"); n == 0 {
		t.Errorf("cell 1 counted no egress_accepted packet")
	}
	flowOf("accepted egress", map[string]string{"verdict": "egress_accepted", "direction": "outbound",
		"source_app": "appA", "destination": "198.18.0.2:8088"})

	// An open connection (HTTP keep-alive), then the rule's removal.
	conn, err := lab.DialIn(ctA, "tcp", netip.AddrPortFrom(inetIP, 8088).String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	request := func() error {
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: inet\r\n\r\n"); err != nil {
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
	if err := request(); err != nil {
		t.Fatalf("request on the open connection: %v", err)
	}
	weft(t, l, 1, append([]string{"remove-egress-rule"}, rule...)...)
	waitFor(t, time.Second, "refused after remove-egress-rule", func() bool {
		_, _, err := get()
		return lab.IsConnRefused(err)
	})
	if err := request(); err == nil {
		t.Errorf("the open connection still carries requests after the rule's removal")
	}
}
