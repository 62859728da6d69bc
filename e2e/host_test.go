package e2e

import (
	"context"
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

// TestHostToRemoteContainer is issue 23's "the cell host reaches a remote
// container when the rules allow it". Cell 1's host (its netns, no
// container) fetches from appB on cell 2 through the tunnel: refused before
// a rule, 200 with `add-ingress-rule appB --from-host` (the server sees
// cell 1's weft0 address, also when the client bound the underlay
// address), refused again after its removal, an open connection cut.
// Nothing of it counts as spoofed, on either cell.
func TestHostToRemoteContainer(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	c1, _ := l.Cell(1)
	ctB := l.Name("b")
	ipB := createContainer(t, l, 2, "appB", ctB)
	ln, err := lab.ListenIn(ctB, "tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "from %s\n", host)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			for i := 1; i <= 2; i++ {
				c, _ := l.Cell(i)
				out, _ := lab.ExecIn(c.Netns, "nft", "list", "ruleset").CombinedOutput()
				t.Logf("cell %d nftables:\n%s", i, out)
			}
		}
	})
	for i := 1; i <= 2; i++ {
		if n := verdict(t, l, i, "spoofed"); n != 0 {
			t.Errorf("fresh cell %d counted %d spoofed packets, want 0", i, n)
		}
	}
	target := url(ipB, 8080)
	get := func() (int, string, error) { return lab.HTTPGetIn(c1.Netns, target, 2*time.Second) }

	if code, _, err := get(); !lab.IsConnRefused(err) {
		t.Fatalf("cell 1 host -> appB on cell 2 without a rule: %d %v; want connection refused", code, err)
	}
	rule := []string{"appB", "--protocol", "tcp", "--port", "8080", "--from-host"}
	weft(t, l, 1, append([]string{"add-ingress-rule"}, rule...)...)
	var body string
	waitFor(t, 2*time.Second, "200 from appB after add-ingress-rule --from-host", func() bool {
		code, b, err := get()
		body = b
		return err == nil && code == 200
	})
	st, err := l.Status(1)
	if err != nil {
		t.Fatal(err)
	}
	cellAddr := netip.MustParsePrefix(st.Subnet).Masked().Addr().Next()
	if want := "from " + cellAddr.String(); strings.TrimSpace(body) != want {
		t.Errorf("appB saw %q, want %q (cell 1's weft0 address)", strings.TrimSpace(body), want)
	}
	// A client that binds the cell's underlay address: the same, through
	// NAT to weft0's address.
	code, b, err := httpGetFrom(c1.Netns, c1.UnderlayIP, target)
	if err != nil || code != 200 || strings.TrimSpace(b) != "from "+cellAddr.String() {
		t.Errorf("from the underlay address: %d %q %v; want 200 from %v", code, b, err, cellAddr)
	}

	conn, err := lab.DialIn(c1.Netns, "tcp", netip.AddrPortFrom(ipB, 8080).String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	request := keepAliveRequest(conn)
	if err := request(); err != nil {
		t.Fatalf("request on the open connection: %v", err)
	}
	weft(t, l, 2, append([]string{"remove-ingress-rule"}, rule...)...)
	waitFor(t, 2*time.Second, "refused after remove-ingress-rule", func() bool {
		_, _, err := get()
		return lab.IsConnRefused(err)
	})
	if err := request(); err == nil {
		t.Errorf("the open connection still carries requests after the rule's removal")
	}

	// A router on the underlay that routes the overlay to cell 1: refused
	// there (the container's own cell judges ingress), counted as ingress.
	router, err := l.AddUnderlayHost(netip.MustParseAddr("198.18.0.3"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := lab.ExecIn(router, "ip", "route", "add", "10.255.0.0/16", "via", c1.UnderlayIP.String()).CombinedOutput(); err != nil {
		t.Fatalf("route on the router: %v: %s", err, out)
	}
	before := verdict(t, l, 1, "ingress")
	if code, _, err := lab.HTTPGetIn(router, target, 2*time.Second); !lab.IsConnRefused(err) {
		t.Errorf("underlay router -> appB through cell 1: %d %v; want connection refused", code, err)
	}
	if n := verdict(t, l, 1, "ingress"); n <= before {
		t.Errorf("cell 1 counted no ingress refusal for the router's packet")
	}
	for i := 1; i <= 2; i++ {
		if n := verdict(t, l, i, "spoofed"); n != 0 {
			t.Errorf("cell %d counted %d spoofed packets, want 0", i, n)
		}
	}
}

// httpGetFrom GETs target from namespace ns with the client socket bound
// to local.
func httpGetFrom(ns string, local netip.Addr, target string) (int, string, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		Proxy:             nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := lab.InNetns(ns, func() error {
				d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: local.AsSlice()}}
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	res, err := client.Get(target)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<16))
	return res.StatusCode, string(b), err
}
