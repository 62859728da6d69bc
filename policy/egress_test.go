package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var testOverlay = netip.MustParsePrefix("10.255.0.0/16")

func TestParseEgressRule(t *testing.T) {
	cases := []struct {
		app, dest, proto, ports string
		want                    string // String() of the rule
		key                     string
	}{
		{"appA", "198.18.0.0/24", "tcp", "80", "appA -> 198.18.0.0/24 tcp 80", "egress:appA>198.18.0.0-198.18.0.255/tcp/80-80"},
		{"appA", "198.18.0.7", "udp", "", "appA -> 198.18.0.7 udp 1-65535", "egress:appA>198.18.0.7-198.18.0.7/udp/1-65535"},
		{EgressAll, "198.18.0.1-198.18.0.9", "icmp", "", "(all apps) -> 198.18.0.1-198.18.0.9 icmp", "egress:*>198.18.0.1-198.18.0.9/icmp/0-0"},
		{"appA", "198.18.0.0-198.18.0.127", "all", "8000-8080", "appA -> 198.18.0.0/25 all 8000-8080", "egress:appA>198.18.0.0-198.18.0.127/all/8000-8080"},
	}
	for _, c := range cases {
		r, err := ParseEgressRule(c.app, c.dest, c.proto, c.ports, testOverlay)
		if err != nil {
			t.Fatalf("%s %s %s %s: %v", c.app, c.dest, c.proto, c.ports, err)
		}
		if r.String() != c.want || r.Key() != c.key {
			t.Errorf("got %q key %q, want %q key %q", r, r.Key(), c.want, c.key)
		}
	}
}

func TestParseEgressRuleErrors(t *testing.T) {
	cases := []struct {
		app, dest, proto, ports string
		want                    string // substrings of the error, all must appear
	}{
		{"appA", "198.18.0.0/33", "tcp", "80", `egress rule "appA" -> "198.18.0.0/33" "tcp" "80": invalid destination "198.18.0.0/33"`},
		{"appA", "198.18.0.1/24", "tcp", "80", "host bits are set; the network is 198.18.0.0/24"},
		{"appA", "198.18.0.9-198.18.0.1", "tcp", "", "start 198.18.0.9 is greater than end 198.18.0.1"},
		{"appA", "2001:db8::/32", "tcp", "", "only IPv4"},
		{"appA", "example.com", "tcp", "", `invalid destination "example.com"`},
		{"appA", "198.18.0.0/24", "icmp", "80", `-> "198.18.0.0/24" "icmp" "80": icmp rules take no ports`},
		{"appA", "198.18.0.0/24", "sctp", "", `invalid protocol "sctp"`},
		{"appA", "198.18.0.0/24", "tcp", "0", "out of range"},
		{"app A", "198.18.0.0/24", "tcp", "80", `invalid app "app A"`},
		{"appA", "10.255.1.0/24", "tcp", "80", "inside the overlay 10.255.0.0/16, and overlay addresses are never egress"},
	}
	for _, c := range cases {
		_, err := ParseEgressRule(c.app, c.dest, c.proto, c.ports, testOverlay)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s %s %s: got error %v, want one containing %q", c.app, c.dest, c.proto, c.ports, err, c.want)
		}
	}
}

func TestEgressWarnings(t *testing.T) {
	all, err := ParseEgressRule("appA", "0.0.0.0/0", "all", "", testOverlay)
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(all.Warnings(testOverlay), "\n")
	if !strings.Contains(w, "0.0.0.0/0 allows every address") || !strings.Contains(w, "inside the overlay 10.255.0.0/16 is not egress") {
		t.Errorf("warnings for 0.0.0.0/0: %q", w)
	}
	narrow, _ := ParseEgressRule("appA", "198.18.0.0/24", "tcp", "443", testOverlay)
	if w := narrow.Warnings(testOverlay); len(w) != 0 {
		t.Errorf("warnings for a narrow rule: %q", w)
	}
}

func TestCheckEgressRules(t *testing.T) {
	mk := func(app, dest, proto, ports string) EgressRule {
		r, err := ParseEgressRule(app, dest, proto, ports, testOverlay)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a := mk("appA", "198.18.0.0/24", "tcp", "80")
	got, err := CheckEgressRules([]EgressRule{a, mk("appB", "198.18.0.0/24", "tcp", "80"), a,
		mk("appA", "198.18.0.0/24", "tcp", "81"), mk("appA", "198.18.0.0/24", "udp", "80")}, testOverlay)
	if err != nil || len(got) != 4 {
		t.Fatalf("distinct rules with a duplicate: %v %v", got, err)
	}
	bad := [][2]EgressRule{
		{a, mk("appA", "198.18.0.128/25", "tcp", "1-100")},
		{a, mk("appA", "198.18.0.5", "all", "")},
		{mk("appA", "198.18.0.0/24", "icmp", ""), mk("appA", "198.18.0.0/16", "all", "")},
	}
	for _, b := range bad {
		_, err := CheckEgressRules(b[:], testOverlay)
		if err == nil || !strings.Contains(err.Error(), "overlaps") || !strings.Contains(err.Error(), "appA -> ") {
			t.Errorf("%v and %v: got %v, want an overlap error naming both", b[0], b[1], err)
		}
	}
}

func TestPublicEgress(t *testing.T) {
	rules, err := CheckEgressRules(PublicEgress(), testOverlay)
	if err != nil {
		t.Fatal(err)
	}
	allowed := func(s string) bool {
		a := netip.MustParseAddr(s)
		for _, r := range rules {
			if r.Start.Compare(a) <= 0 && a.Compare(r.End) <= 0 {
				return true
			}
		}
		return false
	}
	for _, s := range []string{"8.8.8.8", "1.1.1.1", "198.18.0.5", "172.32.0.1", "9.255.255.255", "11.0.0.0"} {
		if !allowed(s) {
			t.Errorf("%s is public but not allowed", s)
		}
	}
	for _, s := range []string{"10.0.0.1", "10.255.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254"} {
		if allowed(s) {
			t.Errorf("%s is private but allowed", s)
		}
	}
}

func TestParseASG(t *testing.T) {
	data := `[{"protocol":"tcp","destination":"198.18.0.0/24,198.19.0.1","ports":"80,443","description":"web"},
		{"protocol":"icmp","destination":"198.18.0.9","type":-1,"code":-1}]`
	rules, err := ParseASG("asg.json", "appA", []byte(data), testOverlay)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rules {
		got = append(got, r.String())
	}
	want := "appA -> 198.18.0.0/24 tcp 80|appA -> 198.18.0.0/24 tcp 443|appA -> 198.18.0.9 icmp|appA -> 198.19.0.1 tcp 80|appA -> 198.19.0.1 tcp 443"
	if strings.Join(got, "|") != want {
		t.Errorf("got %q\nwant %q", strings.Join(got, "|"), want)
	}
	bad := map[string]string{
		`[{"protocol":"tcp","destination":"198.18.0.0/24","ports":"80","colour":"red"}]`:                       `asg.json: json: unknown field "colour"`,
		`[{"protocol":"tcp","destination":"198.18.0.0/24"},{"protocol":"icmp","destination":"198.18.0.0/33"}]`: `asg.json: rule[1]: egress rule "appA" -> "198.18.0.0/33"`,
		`[{"protocol":"icmp","destination":"198.18.0.0/24","ports":"80"}]`:                                     "rule[0]: egress rule",
		`[{"protocol":"icmp","destination":"198.18.0.0/24","type":8}]`:                                         `rule[0]: icmp "type"`,
		`[{"destination":"198.18.0.0/24"}]`:                                                                    `rule[0]: needs "protocol"`,
		`null`:                                                                                                 "want a JSON list",
		`[] []`:                                                                                                "data after",
	}
	for in, want := range bad {
		_, err := ParseASG("asg.json", "appA", []byte(in), testOverlay)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error containing %q", in, err, want)
		}
	}
}

func TestParseEgressYAML(t *testing.T) {
	ov := netip.MustParsePrefix("10.255.0.0/16")
	good := "policies: []\negress:\n  - {app: web, destination: 10.0.11.0/24, protocol: tcp, ports: \"443\"}\n  - {app: \"*\", destination: 8.8.8.8, protocol: icmp}\n"
	rules, given, err := ParseEgressYAML("p.yaml", []byte(good), ov)
	if err != nil || !given || len(rules) != 2 {
		t.Fatalf("good file: %v %v %v", rules, given, err)
	}
	if _, err := ParseYAML("p.yaml", []byte(good)); err != nil {
		t.Fatalf("ParseYAML of a file with egress: %v", err)
	}
	if _, given, err := ParseEgressYAML("p.yaml", []byte("policies: []\n"), ov); given || err != nil {
		t.Fatalf("file without egress: given %v, %v", given, err)
	}
	for _, tc := range []struct{ doc, want string }{
		{"egress:\n  - {app: web, destination: 10.0.11.1/24, protocol: tcp}\n", "p.yaml:2: egress[0]: egress rule \"web\" -> \"10.0.11.1/24\""},
		{"egress:\n  - {app: web, destination: 10.0.0.0/8, protocol: icmp, ports: \"8\"}\n", "p.yaml:2: egress[0]: egress rule \"web\" -> \"10.0.0.0/8\" \"icmp\" \"8\": icmp rules take no ports"},
		{"egress:\n  - {app: web, destination: 10.0.0.0/8, protocol: tcp, log: true}\n", "p.yaml:2: egress[0]: unknown field \"log\""},
		{"egress:\n  - {app: web, destination: 10.0.0.0/8, protocol: tcp}\n  - {app: web, destination: 10.1.0.0/16, protocol: tcp, ports: \"80\"}\n", "p.yaml: egress rule web -> 10.0.0.0/8 tcp 1-65535 overlaps egress rule web -> 10.1.0.0/16 tcp 80"},
		{"egress:\n", "p.yaml:1: egress: null"},
	} {
		if _, _, err := ParseEgressYAML("p.yaml", []byte(tc.doc), ov); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.doc, err, tc.want)
		}
	}
}

// TestMarshalYAMLWithEgress: the export's egress list parses back to the
// same rules, and nil leaves the list out (a push of it leaves egress
// alone).
func TestMarshalYAMLWithEgress(t *testing.T) {
	overlay := netip.MustParsePrefix("10.255.0.0/16")
	rules := []Rule{{Source: "a", Destination: "b", Protocol: ProtoTCP, Ports: PortRange{8080, 8080}}}
	egress := append(PublicEgress(), EgressRule{App: "web", Start: netip.MustParseAddr("10.0.11.0"), End: netip.MustParseAddr("10.0.11.255"),
		Protocol: ProtoICMP})
	b, err := MarshalYAMLWithEgress(rules, egress)
	if err != nil {
		t.Fatal(err)
	}
	gotRules, err := ParseYAML("x.yaml", b)
	if err != nil || !slices.Equal(gotRules, rules) {
		t.Fatalf("policies: %v %v\n%s", gotRules, err, b)
	}
	got, given, err := ParseEgressYAML("x.yaml", b, overlay)
	SortEgressRules(egress)
	if err != nil || !given || !slices.Equal(got, egress) {
		t.Fatalf("egress: %v %v %v, want %v\n%s", got, given, err, egress, b)
	}
	b, err = MarshalYAMLWithEgress(rules, nil)
	if _, given, _ := ParseEgressYAML("x.yaml", b, overlay); err != nil || given {
		t.Fatalf("nil egress: %v, list given %v\n%s", err, given, b)
	}
}
