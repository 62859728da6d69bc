package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestCheckIngressRules(t *testing.T) {
	r := func(app, src, proto, ports string) IngressRule {
		t.Helper()
		x, err := ParseIngressRule(app, src, proto, ports, netip.Prefix{})
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	ok := [][]IngressRule{
		{r("web", "host", "tcp", "8080"), r("web", "host", "tcp", "8081")},           // ports apart
		{r("web", "host", "tcp", "8080"), r("web", "host", "udp", "8080")},           // protocols apart
		{r("web", "host", "tcp", "8080"), r("web", "198.18.0.0/24", "tcp", "8080")},  // host is not a range
		{r("web", "10.0.0.0/24", "tcp", "80"), r("web", "10.0.1.0/24", "tcp", "80")}, // sources apart
		{r("web", "10.0.0.0/24", "tcp", "80"), r("api", "10.0.0.0/24", "tcp", "80")}, // apps apart
		{r("web", "10.0.0.0/24", "tcp", "80"), r("web", "10.0.0.0/24", "tcp", "80")}, // the same rule twice
	}
	for _, set := range ok {
		if _, err := CheckIngressRules(set, netip.Prefix{}); err != nil {
			t.Errorf("%v: %v", set, err)
		}
	}
	bad := []struct {
		set  []IngressRule
		want string
	}{
		{[]IngressRule{r("web", "host", "tcp", "8080-8090"), r("web", "host", "tcp", "8085")},
			"ingress rule web <- cell hosts tcp 8080-8090 overlaps ingress rule web <- cell hosts tcp 8085: merge them into one"},
		{[]IngressRule{r("web", "10.0.0.0/16", "udp", "53"), r("web", "10.0.3.0-10.1.0.0", "udp", "50-60")},
			"ingress rule web <- 10.0.0.0/16 udp 53 overlaps ingress rule web <- 10.0.3.0-10.1.0.0 udp 50-60"},
	}
	for _, tc := range bad {
		if _, err := CheckIngressRules(tc.set, netip.Prefix{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want %q", tc.set, err, tc.want)
		}
	}
}

func TestParseIngressYAML(t *testing.T) {
	ov := netip.MustParsePrefix("10.255.0.0/16")
	good := "policies: []\ningress:\n  - {app: web, source: host, protocol: tcp, ports: \"8080\"}\n  - {app: web, source: 198.18.0.0/24, protocol: tcp, ports: 8080}\n"
	rules, given, err := ParseIngressYAML("p.yaml", []byte(good), ov)
	if err != nil || !given || len(rules) != 2 || !rules[0].FromHost {
		t.Fatalf("good file: %v %v %v", rules, given, err)
	}
	if _, err := ParseYAML("p.yaml", []byte(good)); err != nil {
		t.Fatalf("ParseYAML of a file with ingress: %v", err)
	}
	if _, given, err := ParseIngressYAML("p.yaml", []byte("policies: []\negress: []\n"), ov); given || err != nil {
		t.Fatalf("file without ingress: given %v, %v", given, err)
	}
	for _, tc := range []struct{ doc, want string }{
		{"ingress:\n  - {app: web, source: host, protocol: tcp}\n", `p.yaml:2: ingress[0]: missing field "ports"`},
		{"ingress:\n  - {app: web, source: 10.255.3.0/24, protocol: tcp, ports: \"80\"}\n", `p.yaml:2: ingress[0]: ingress rule "web" <- "10.255.3.0/24"`},
		{"ingress:\n  - {app: web, source: host, protocol: icmp, ports: \"80\"}\n", "ingress rules are tcp or udp"},
		{"ingress:\n  - {app: web, source: host, protocol: tcp, ports: \"80\", log: true}\n", `p.yaml:2: ingress[0]: unknown field "log"`},
		{"ingress:\n  - {app: web, source: host, protocol: tcp, ports: \"80\"}\n  - {app: web, source: host, protocol: tcp, ports: \"1-100\"}\n",
			"p.yaml: ingress rule web <- cell hosts tcp 1-100 overlaps ingress rule web <- cell hosts tcp 80"},
		{"ingress:\n", "p.yaml:1: ingress: null"},
		{"ingress: []\ningress: []\n", "p.yaml:2: ingress: given twice"},
	} {
		if _, _, err := ParseIngressYAML("p.yaml", []byte(tc.doc), ov); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.doc, err, tc.want)
		}
	}
}

// TestMarshalYAMLFile: the export's ingress and egress lists parse back to
// the same rules; an empty list is written (a push of it removes them all)
// and nil leaves it out.
func TestMarshalYAMLFile(t *testing.T) {
	ov := netip.MustParsePrefix("10.255.0.0/16")
	rules := []Rule{{Source: "a", Destination: "b", Protocol: ProtoTCP, Ports: PortRange{8080, 8080}}}
	ingress := []IngressRule{
		{App: "web", Start: netip.MustParseAddr("198.18.0.0"), End: netip.MustParseAddr("198.18.0.255"), Protocol: ProtoUDP, Ports: PortRange{53, 53}},
		{App: "web", FromHost: true, Protocol: ProtoTCP, Ports: PortRange{8080, 8090}},
	}
	b, err := MarshalYAMLFile(rules, PublicEgress(), ingress)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ParseYAML("x.yaml", b); err != nil || !slices.Equal(got, rules) {
		t.Fatalf("policies: %v %v\n%s", got, err, b)
	}
	if got, given, err := ParseEgressYAML("x.yaml", b, ov); err != nil || !given || len(got) != len(PublicEgress()) {
		t.Fatalf("egress: %v %v %v\n%s", got, given, err, b)
	}
	got, given, err := ParseIngressYAML("x.yaml", b, ov)
	SortIngressRules(ingress)
	if err != nil || !given || !slices.Equal(got, ingress) {
		t.Fatalf("ingress: %v %v %v, want %v\n%s", got, given, err, ingress, b)
	}
	b, err = MarshalYAMLFile(rules, nil, []IngressRule{})
	if err != nil {
		t.Fatal(err)
	}
	if got, given, err := ParseIngressYAML("x.yaml", b, ov); err != nil || !given || len(got) != 0 {
		t.Fatalf("empty ingress: %v %v %v\n%s", got, given, err, b)
	}
	if _, given, _ := ParseEgressYAML("x.yaml", b, ov); given {
		t.Fatalf("nil egress written:\n%s", b)
	}
}
