package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/policy"
)

func egressRule(t *testing.T, app, dst, proto, ports string) policy.EgressRule {
	t.Helper()
	r, err := policy.ParseEgressRule(app, dst, proto, ports, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPushEgress: `weft policy push` applies the file's egress list with
// its policies as one batch; a bad egress entry names file, line and
// entry, and nothing is sent; a file without "egress" leaves the egress
// rules alone; removals of egress rules count for --allow-large-removal;
// export writes the egress list, and pushing the export changes nothing.
func TestPushEgress(t *testing.T) {
	old := egressRule(t, "web", "198.18.0.0/24", "tcp", "80")
	f := startFakeAgent(t, tcp("appA", "appB", 8080, 8080))
	f.egress[old] = true
	f.egress[egressRule(t, "api", "198.18.1.0/24", "udp", "53")] = true

	file := writeFile(t, "p.yaml", `policies:
- {source: appA, destination: appB, protocol: tcp, ports: "8080"}
- {source: appA, destination: dns, protocol: udp, ports: "53"}
egress:
- {app: web, destination: 198.18.0.0/24, protocol: tcp, ports: "80-81"}
- {app: api, destination: 198.18.1.0/24, protocol: udp, ports: "53"}
- {app: "*", destination: 0.0.0.0/0, protocol: icmp}
`)
	out, err := weftPolicy(t, "push", file)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	for _, want := range []string{"- egress web -> 198.18.0.0/24 tcp 80\n", "+ egress web -> 198.18.0.0/24 tcp 80-81\n",
		"+ egress (all apps) -> 0.0.0.0/0 icmp\n", "warning: (all apps) -> 0.0.0.0/0 icmp: 0.0.0.0/0 allows every address",
		"+ appA -> dns udp 53\n", "3 added, 1 removed, 2 policies now, 3 egress rules\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("push output lacks %q:\n%s", want, out)
		}
	}
	if len(f.pushes) != 1 || len(f.pushes[0].Changes) != 4 || !f.pushes[0].Push {
		t.Fatalf("pushes %+v; want one batch of 4 changes", f.pushes)
	}
	if len(f.egress) != 3 || f.egress[old] {
		t.Fatalf("egress after push: %v", f.egressList())
	}

	// Bad entries: nothing is sent, the error names file, line and entry.
	for _, tc := range []struct{ entry, want string }{
		{`{app: web, destination: 10.255.3.0/24, protocol: tcp}`, "inside the overlay 10.255.0.0/16"},
		{`{app: web, destination: 10.0.0.1/24, protocol: tcp}`, "host bits are set; the network is 10.0.0.0/24"},
		{`{app: web, destination: 10.0.0.0/24, protocol: icmp, ports: "8"}`, "icmp rules take no ports"},
		{`{app: web, destination: 10.0.0.0/24, protocol: tcp, port: "8"}`, `unknown field "port"`},
		{`{app: web, destination: 198.18.0.0/16, protocol: tcp, ports: "81"}`, "overlaps egress rule"},
	} {
		bad := writeFile(t, "bad.yaml", "policies: []\negress:\n- {app: web, destination: 198.18.0.0/24, protocol: tcp, ports: \"80-81\"}\n- "+tc.entry+"\n")
		_, err := weftPolicy(t, "push", bad, "--allow-large-removal")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), bad) {
			t.Errorf("push of %s: %v; want an error naming the file and %q", tc.entry, err, tc.want)
		}
		if !strings.Contains(tc.want, "overlaps") && (err == nil || !strings.Contains(err.Error(), bad+":4: egress[1]")) {
			t.Errorf("push of %s: %v; want the line and entry", tc.entry, err)
		}
	}
	if len(f.pushes) != 1 || len(f.egress) != 3 || len(f.set) != 2 {
		t.Fatalf("bad files sent %d pushes; egress %v", len(f.pushes)-1, f.egressList())
	}

	// No egress list: the egress rules stay.
	noEgress := writeFile(t, "p.yaml", "policies:\n- {source: appA, destination: appB, protocol: tcp, ports: \"8080\"}\n- {source: appA, destination: dns, protocol: udp, ports: \"53\"}\n")
	if out, err := weftPolicy(t, "push", noEgress); err != nil || !strings.Contains(out, "0 added, 0 removed, 2 policies now\n") || len(f.egress) != 3 {
		t.Fatalf("push without egress: %v\n%s\negress %v", err, out, f.egressList())
	}
	// egress: [] removes 3 of the 5 rules: a large removal.
	emptyEgress := writeFile(t, "p.yaml", "policies:\n- {source: appA, destination: appB, protocol: tcp, ports: \"8080\"}\n- {source: appA, destination: dns, protocol: udp, ports: \"53\"}\negress: []\n")
	if _, err := weftPolicy(t, "push", emptyEgress); err == nil || !strings.Contains(err.Error(), "removes 3 of the 5") || len(f.egress) != 3 {
		t.Fatalf("push of egress: [] over 3 rules: %v; want refused as a large removal", err)
	}

	// Export, then push it: nothing changes.
	exported, err := weftPolicy(t, "export")
	if err != nil || !strings.Contains(exported, "egress:\n") || !strings.Contains(exported, "destination: 0.0.0.0/0") {
		t.Fatalf("export: %v\n%s", err, exported)
	}
	n := len(f.pushes)
	if out, err := weftPolicy(t, "push", writeFile(t, "e.yaml", exported)); err != nil || !strings.Contains(out, "0 added, 0 removed, 2 policies now, 3 egress rules") || len(f.pushes) != n {
		t.Fatalf("push of the export: %v\n%s", err, out)
	}
	if out, err := weftPolicy(t, "export", "--format", "cf-json"); err != nil || !strings.Contains(out, "warning: 3 egress rules left out") {
		t.Fatalf("cf-json export: %v\n%s", err, out)
	}
}

// TestImportASG: `weft egress-rules import APP|--all FILE` adds a CF
// security group's rules as one batch; rules already there stay; a bad
// file (unknown field, icmp with ports, invalid CIDR) or an overlap with
// an existing rule changes nothing and names the rule.
func TestImportASG(t *testing.T) {
	f := startFakeAgent(t)
	have := egressRule(t, "web", "10.0.11.0/24", "tcp", "80")
	f.egress[have] = true
	asg := writeFile(t, "asg.json", `[{"protocol":"tcp","destination":"10.0.11.0/24","ports":"80,443","description":"db"},
 {"protocol":"icmp","destination":"0.0.0.0/0","type":-1,"code":-1}]`)
	out, err := execCmd(t, listEgressCmd(), "import", "web", asg)
	if err != nil || !strings.Contains(out, "+ egress web -> 10.0.11.0/24 tcp 443\n") || !strings.Contains(out, "2 added, 1 already present\n") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	want := []policy.EgressRule{egressRule(t, "web", "0.0.0.0/0", "icmp", ""), have, egressRule(t, "web", "10.0.11.0/24", "tcp", "443")}
	if got := f.egressList(); !slices.Equal(got, want) || len(f.pushes) != 1 || !f.pushes[0].Push {
		t.Fatalf("after import: %v (pushes %d); want %v", got, len(f.pushes), want)
	}
	if out, err := execCmd(t, listEgressCmd(), "import", "--all", asg, "--dry-run"); err != nil || !strings.Contains(out, "dry run: 3 to add") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}

	for _, tc := range []struct{ data, want string }{
		{`[{"protocol":"tcp","destination":"10.0.12.0/24","ports":"443","logging":true}]`, `unknown field "logging"`},
		{`[{"protocol":"tcp","destination":"10.0.12.0/24"},{"protocol":"icmp","destination":"10.0.12.0/24","ports":"8"}]`, "rule[1]: egress rule \"web\" -> \"10.0.12.0/24\" \"icmp\" \"8\": icmp rules take no ports"},
		{`[{"protocol":"tcp","destination":"10.0.12.300/24"}]`, `rule[0]: egress rule "web" -> "10.0.12.300/24" "tcp": invalid destination`},
		{`[{"protocol":"tcp","destination":"10.0.11.0/25","ports":"443"}]`, "overlaps egress rule"},
	} {
		bad := writeFile(t, "bad.json", tc.data)
		_, err := execCmd(t, listEgressCmd(), "import", "web", bad)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), bad) {
			t.Errorf("import of %s: %v; want an error naming the file and %q", tc.data, err, tc.want)
		}
	}
	if got := f.egressList(); !slices.Equal(got, want) {
		t.Fatalf("bad imports changed the set: %v", got)
	}
}
