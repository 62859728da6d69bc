package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/policy"
)

func ingressRule(t *testing.T, app, src, proto, ports string) policy.IngressRule {
	t.Helper()
	r, err := policy.ParseIngressRule(app, src, proto, ports, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPushIngress: `weft policy push` applies the file's ingress list with
// its policies and egress rules as one batch; a bad or overlapping ingress
// entry names file, line and entry (both rules for an overlap), and
// nothing is sent; a file without "ingress" leaves the ingress rules
// alone; their removals count for --allow-large-removal; export writes the
// list, and pushing the export changes nothing.
func TestPushIngress(t *testing.T) {
	old := ingressRule(t, "web", "198.18.0.0/24", "tcp", "8080")
	f := startFakeAgent(t, tcp("appA", "appB", 8080, 8080))
	f.ingress[old] = true
	f.ingress[ingressRule(t, "api", "host", "udp", "53")] = true

	file := writeFile(t, "p.yaml", `policies:
- {source: appA, destination: appB, protocol: tcp, ports: "8080"}
egress:
- {app: web, destination: 198.18.0.0/24, protocol: tcp, ports: "80"}
ingress:
- {app: web, source: 198.18.0.0/24, protocol: tcp, ports: "8080-8081"}
- {app: web, source: host, protocol: tcp, ports: "8080"}
- {app: api, source: host, protocol: udp, ports: "53"}
`)
	out, err := weftPolicy(t, "push", file)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	for _, want := range []string{"- ingress web <- 198.18.0.0/24 tcp 8080\n", "+ ingress web <- 198.18.0.0/24 tcp 8080-8081\n",
		"+ ingress web <- cell hosts tcp 8080\n", "+ egress web -> 198.18.0.0/24 tcp 80\n",
		"3 added, 1 removed, 1 policies now, 1 egress rules, 3 ingress rules\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("push output lacks %q:\n%s", want, out)
		}
	}
	if len(f.pushes) != 1 || len(f.pushes[0].Changes) != 4 || !f.pushes[0].Push {
		t.Fatalf("pushes %+v; want one batch of 4 changes", f.pushes)
	}
	if len(f.ingress) != 3 || f.ingress[old] {
		t.Fatalf("ingress after push: %v", f.ingressList())
	}

	for _, tc := range []struct{ entry, want string }{
		{`{app: web, source: 10.255.3.0/24, protocol: tcp, ports: "80"}`, "overlaps the overlay 10.255.0.0/16"},
		{`{app: web, source: host, protocol: icmp, ports: "80"}`, "ingress rules are tcp or udp"},
		{`{app: web, source: host, protocol: tcp}`, `missing field "ports"`},
		{`{app: web, source: host, protocol: tcp, port: "8"}`, `unknown field "port"`},
		{`{app: web, source: 198.18.0.128/25, protocol: tcp, ports: "8081"}`,
			"ingress rule web <- 198.18.0.0/24 tcp 8080-8081 overlaps ingress rule web <- 198.18.0.128/25 tcp 8081"},
	} {
		bad := writeFile(t, "bad.yaml", "policies: []\ningress:\n- {app: web, source: 198.18.0.0/24, protocol: tcp, ports: \"8080-8081\"}\n- "+tc.entry+"\n")
		_, err := weftPolicy(t, "push", bad, "--allow-large-removal")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), bad) {
			t.Errorf("push of %s: %v; want an error naming the file and %q", tc.entry, err, tc.want)
		}
		if !strings.Contains(tc.want, "overlaps ingress") && (err == nil || !strings.Contains(err.Error(), bad+":4: ingress[1]")) {
			t.Errorf("push of %s: %v; want the line and entry", tc.entry, err)
		}
	}
	if len(f.pushes) != 1 || len(f.ingress) != 3 {
		t.Fatalf("bad files sent %d pushes; ingress %v", len(f.pushes)-1, f.ingressList())
	}

	// No ingress list: the ingress rules stay; ingress: [] removes 3 of 5.
	base := "policies:\n- {source: appA, destination: appB, protocol: tcp, ports: \"8080\"}\negress:\n- {app: web, destination: 198.18.0.0/24, protocol: tcp, ports: \"80\"}\n"
	if out, err := weftPolicy(t, "push", writeFile(t, "p.yaml", base)); err != nil || !strings.Contains(out, "0 added, 0 removed") || len(f.ingress) != 3 {
		t.Fatalf("push without ingress: %v\n%s\ningress %v", err, out, f.ingressList())
	}
	if _, err := weftPolicy(t, "push", writeFile(t, "p.yaml", base+"ingress: []\n")); err == nil || !strings.Contains(err.Error(), "removes 3 of the 5") || len(f.ingress) != 3 {
		t.Fatalf("push of ingress: [] over 3 rules: %v; want refused as a large removal", err)
	}

	exported, err := weftPolicy(t, "export")
	if err != nil || !strings.Contains(exported, "ingress:\n") || !strings.Contains(exported, "source: host") {
		t.Fatalf("export: %v\n%s", err, exported)
	}
	n := len(f.pushes)
	if out, err := weftPolicy(t, "push", writeFile(t, "e.yaml", exported)); err != nil || !strings.Contains(out, "0 added, 0 removed, 1 policies now, 1 egress rules, 3 ingress rules") || len(f.pushes) != n {
		t.Fatalf("push of the export: %v\n%s", err, out)
	}
	if out, err := weftPolicy(t, "export", "--format", "cf-json"); err != nil || !strings.Contains(out, "warning: 3 ingress rules left out") {
		t.Fatalf("cf-json export: %v\n%s", err, out)
	}
}
