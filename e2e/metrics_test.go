package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

const metricsPort = 9465

// scrape GETs http://UNDERLAY_IP:9465/metrics of cell `of` from the
// namespace of cell `from`, as a Prometheus server on another host would,
// and returns the samples by series ("name{label=\"v\"}") and the raw text.
func scrape(t *testing.T, l *lab.Lab, from, of int) (map[string]float64, string) {
	t.Helper()
	src, _ := l.Cell(from)
	dst, _ := l.Cell(of)
	url := fmt.Sprintf("http://%s/metrics", netip.AddrPortFrom(dst.UnderlayIP, metricsPort))
	code, body, err := lab.HTTPGetIn(src.Netns, url, 5*time.Second)
	if err != nil || code != 200 {
		t.Fatalf("scrape %s from cell %d: code %d err %v", url, from, code, err)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape %s: bad sample line %q", url, line)
		}
		samples[line[:i]] = v
	}
	return samples, body
}

// sum adds the samples of metric name (all label sets).
func sum(samples map[string]float64, name string) float64 {
	total := 0.0
	for k, v := range samples {
		if k == name || strings.HasPrefix(k, name+"{") {
			total += v
		}
	}
	return total
}

// TestMetrics scrapes the agents' Prometheus endpoints: a denied connection
// moves the denied counter of the destination cell, an allowed one the
// allowed counter; members, peers, lease and policy version are reported.
func TestMetrics(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin,
		AgentArgs: []string{"--metrics-addr", fmt.Sprintf(":%d", metricsPort), "--log-format", "json"}})
	a, b := l.Name("appA"), l.Name("appB")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, b, 8080)

	before, _ := scrape(t, l, 1, 2)
	expectRefused(t, a, ipB, 8080)
	after, text := scrape(t, l, 1, 2)
	t.Logf("scrape of cell 2 after a refused connection:\n%s", grep(text, "weft_"))
	if d := sum(after, "weft_packets_denied_total") - sum(before, "weft_packets_denied_total"); d < 1 {
		t.Fatalf("denied packets on cell 2 moved by %v after a refused connection, want >= 1\n%s", d, text)
	}
	if d := after["weft_rejects_sent_total"] - before["weft_rejects_sent_total"]; d < 1 {
		t.Fatalf("rejects sent on cell 2 moved by %v, want >= 1", d)
	}
	t.Logf("cell 2 after a refused connection: denied %v (no_policy %v, unknown_source %v), rejects sent %v",
		sum(after, "weft_packets_denied_total"), after[`weft_packets_denied_total{reason="no_policy"}`],
		after[`weft_packets_denied_total{reason="unknown_source"}`], after["weft_rejects_sent_total"])

	st, err := l.Status(2)
	if err != nil {
		t.Fatal(err)
	}
	// weft status: members by state, peers with name, handshake age, bytes.
	var js struct {
		MemberCounts map[string]int `json:"member_counts"`
		Peers        []struct {
			Name         string  `json:"name"`
			HandshakeAge float64 `json:"handshake_age_seconds"`
			RxBytes      int64   `json:"rx_bytes"`
		} `json:"peers"`
	}
	if err := json.Unmarshal(st.Raw, &js); err != nil {
		t.Fatal(err)
	}
	if js.MemberCounts["alive"] != 2 || len(js.Peers) != 1 || js.Peers[0].Name != "c1" || js.Peers[0].HandshakeAge <= 0 || js.Peers[0].RxBytes <= 0 {
		t.Errorf("weft status --output json: %s\nwant 2 alive members and peer c1 with a handshake age and rx bytes", st.Raw)
	}
	t.Logf("$ weft status\n%s", weft(t, l, 2, "status"))

	// Versions and health (issue 25 item 4): both members announce the
	// version `weft version` prints, the cell is ready, /healthz and
	// /readyz answer on the metrics listener, weft_build_info names it.
	var vs struct {
		Version string `json:"version"`
		Ready   bool   `json:"ready"`
		Members []struct {
			Name, Version string
		} `json:"members"`
	}
	if err := json.Unmarshal(st.Raw, &vs); err != nil {
		t.Fatal(err)
	}
	binVersion := strings.Fields(weft(t, l, 2, "version"))[1]
	if vs.Version != binVersion || !vs.Ready || len(vs.Members) != 2 || vs.Members[0].Version != binVersion || vs.Members[1].Version != binVersion {
		t.Errorf("status: version %q ready %v members %+v; want version %q (weft version) everywhere, ready", vs.Version, vs.Ready, vs.Members, binVersion)
	}
	c1, _ := l.Cell(1)
	dst2, _ := l.Cell(2)
	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ready\n"} {
		url := fmt.Sprintf("http://%s%s", netip.AddrPortFrom(dst2.UnderlayIP, metricsPort), path)
		if code, body, err := lab.HTTPGetIn(c1.Netns, url, 5*time.Second); err != nil || code != 200 || body != want {
			t.Errorf("GET %s: %d %q %v; want 200 %q", url, code, body, err, want)
		}
	}
	if n := sum(after, "weft_build_info"); n != 1 || !strings.Contains(text, `version="`+binVersion+`"`) {
		t.Errorf("weft_build_info: sum %v, want one series with version=%q:\n%s", n, binVersion, grep(text, "weft_build_info"))
	}

	checks := map[string]float64{
		`weft_members{state="alive"}`:                  2,
		`weft_members{state="dead"}`:                   0,
		`weft_lease{subnet="` + st.Subnet + `"}`:       1,
		`weft_policies`:                                0,
		`weft_containers`:                              1,
		`weft_peers`:                                   1,
		`weft_policy_enforced`:                         1,
		`weft_scrape_errors_total{part="wireguard"}`:   0,
		`weft_packets_allowed_total{verdict="accept"}`: after[`weft_packets_allowed_total{verdict="accept"}`],
	}
	for series, want := range checks {
		if got, ok := after[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if _, ok := after[`weft_packets_dropped_no_session_total`]; !ok {
		t.Error("no weft_packets_dropped_no_session_total")
	}
	if after[`weft_peer_receive_bytes_total{peer="c1",public_key="`+peerKey(t, st, "c1")+`"}`] <= 0 {
		t.Errorf("no bytes received from peer c1:\n%s", grep(text, "weft_peer"))
	}
	if _, ok := after[`weft_peer_last_handshake_seconds{peer="c1",public_key="`+peerKey(t, st, "c1")+`"}`]; !ok {
		t.Errorf("no handshake age for peer c1:\n%s", grep(text, "weft_peer"))
	}

	// Allowed traffic moves the allowed counter; both cells agree on the
	// policy version once the rule has spread.
	weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	expectHTTP(t, a, ipB, 8080)
	allowed, _ := scrape(t, l, 1, 2)
	if d := sum(allowed, "weft_packets_allowed_total") - sum(after, "weft_packets_allowed_total"); d < 3 {
		t.Fatalf("allowed packets on cell 2 moved by %v after an HTTP exchange, want >= 3", d)
	}
	if allowed["weft_policies"] != 1 {
		t.Fatalf("weft_policies = %v, want 1", allowed["weft_policies"])
	}
	// --log-format json: the agent logs JSON lines.
	c2, _ := l.Cell(2)
	logText, err := os.ReadFile(c2.LogPath)
	if err != nil || !strings.Contains(string(logText), `"msg":"serving metrics"`) {
		t.Errorf("cell 2 log (--log-format json) has no JSON line for \"serving metrics\":\n%s", logText)
	}

	v1, _ := scrape(t, l, 2, 1)
	if v1["weft_policy_version"] != allowed["weft_policy_version"] || v1["weft_policy_version"] == after["weft_policy_version"] {
		t.Fatalf("policy version: cell 1 %v, cell 2 %v, before the rule %v: want equal on both cells and changed",
			v1["weft_policy_version"], allowed["weft_policy_version"], after["weft_policy_version"])
	}
	weft(t, l, 2, "policy-enforcement", "off")
	if off, _ := scrape(t, l, 1, 2); off["weft_policy_enforced"] != 0 {
		t.Fatalf("weft_policy_enforced = %v with enforcement off, want 0", off["weft_policy_enforced"])
	}
}

func peerKey(t *testing.T, st lab.Status, member string) string {
	t.Helper()
	for _, p := range st.Peers {
		if strings.Contains(string(p.Raw), `"name":"`+member+`"`) || p.Name == member {
			return p.PublicKey
		}
	}
	t.Fatalf("status has no peer named %s: %s", member, st.Raw)
	return ""
}

func grep(text, substr string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
