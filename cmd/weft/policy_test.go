package main

import (
	"strings"
	"testing"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/policy"
)

// TestPolicyCLIProtocols: icmp and all rules from the command line, as
// policy files take them: icmp without ports (--port is an error), all
// with a port range or, without --port, every port.
func TestPolicyCLIProtocols(t *testing.T) {
	f := startFakeAgent(t)
	for _, tc := range []struct {
		args []string
		want cellapi.PolicyRule
		out  string
	}{
		{[]string{"--protocol", "icmp"}, cellapi.PolicyRule{Source: "a", Destination: "b", Protocol: "icmp"}, "(icmp)"},
		{[]string{"--protocol", "all"}, cellapi.PolicyRule{Source: "a", Destination: "b", Protocol: "all", Ports: cellapi.PortRange{Start: 1, End: 65535}}, "(all 1-65535)"},
		{[]string{"--protocol", "all", "--port", "8000-8100"}, cellapi.PolicyRule{Source: "a", Destination: "b", Protocol: "all", Ports: cellapi.PortRange{Start: 8000, End: 8100}}, "(all 8000-8100)"},
		{nil, cellapi.PolicyRule{Source: "a", Destination: "b", Protocol: "tcp", Ports: cellapi.PortRange{Start: 8080, End: 8080}}, "(tcp 8080)"},
	} {
		out, err := execCmd(t, addPolicyCmd(), append([]string{"a", "b"}, tc.args...)...)
		if err != nil || !strings.Contains(out, tc.out+"...\nOK\n") {
			t.Errorf("add %v: %v\n%s", tc.args, err, out)
		}
		if !f.set[tc.want] {
			t.Errorf("add %v: the agent has %v, want %+v", tc.args, f.list(), tc.want)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--protocol", "icmp", "--port", "80"}, "--port 80: icmp rules take no ports: leave --port out"},
		{[]string{"--protocol", "tcp"}, "--protocol tcp needs --port"},
		{[]string{"--port", "80"}, "--port needs --protocol"},
		{[]string{"--protocol", "sctp", "--port", "80"}, `invalid protocol "sctp"`},
	} {
		if _, err := execCmd(t, addPolicyCmd(), append([]string{"a", "b"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("add %v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	if _, err := execCmd(t, removePolicyCmd(), "a", "b"); err == nil || !strings.Contains(err.Error(), "--protocol") {
		t.Errorf("remove without --protocol: %v", err)
	}
	if out, err := execCmd(t, removePolicyCmd(), "a", "b", "--protocol", "icmp"); err != nil || !strings.HasSuffix(out, "(icmp)...\nOK\n") {
		t.Errorf("remove icmp: %v\n%s", err, out)
	}
	if f.set[cellapi.PolicyRule{Source: "a", Destination: "b", Protocol: "icmp"}] {
		t.Error("icmp rule still there after its removal")
	}
}

// TestRemoveMissingPolicy: as cf, removing a policy that does not exist
// prints "Policy does not exist." then "OK" and succeeds.
func TestRemoveMissingPolicy(t *testing.T) {
	startFakeAgent(t)
	out, err := execCmd(t, removePolicyCmd(), "a", "b", "--protocol", "tcp", "--port", "8080")
	if err != nil {
		t.Fatalf("remove of a missing policy failed: %v\n%s", err, out)
	}
	if want := "Removing network policy from app a to app b (tcp 8080)...\nPolicy does not exist.\nOK\n"; out != want {
		t.Fatalf("printed %q, want %q", out, want)
	}
}

// TestNetworkPoliciesHeader: the table has cf's columns, in cf's words.
func TestNetworkPoliciesHeader(t *testing.T) {
	startFakeAgent(t, tcp("appA", "appB", 8080, 8090),
		policy.Rule{Source: "appA", Destination: "appB", Protocol: policy.ProtoICMP})
	out, err := execCmd(t, listPoliciesCmd())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 rows:\n%s", out)
	}
	if got := strings.Join(strings.Fields(lines[0]), " "); got != "source destination protocol ports destination space destination org" {
		t.Errorf("header %q", lines[0])
	}
	if !strings.HasPrefix(lines[0], "source   destination   protocol") {
		t.Errorf("header not cf's tab layout: %q", lines[0])
	}
	rows := strings.Join(strings.Fields(lines[1]), " ") + "|" + strings.Join(strings.Fields(lines[2]), " ")
	if rows != "appA appB icmp -|appA appB tcp 8080-8090" && rows != "appA appB tcp 8080-8090|appA appB icmp -" {
		t.Errorf("rows %q", rows)
	}
	for _, l := range lines {
		if strings.HasSuffix(l, " ") {
			t.Errorf("trailing blanks in %q", l)
		}
	}
}

// TestSpaceOrg: cf's -s SPACE -o ORG qualify the destination app as
// ORG/SPACE/APP, on add and remove; one without the other, or with an
// already qualified destination, is refused before the agent is asked;
// network-policies shows the destination's space and org in cf's columns.
func TestSpaceOrg(t *testing.T) {
	f := startFakeAgent(t)
	out, err := execCmd(t, addPolicyCmd(), "a", "b", "-s", "prod", "-o", "acme", "--protocol", "tcp", "--port", "443")
	want := cellapi.PolicyRule{Source: "a", Destination: "acme/prod/b", Protocol: "tcp", Ports: cellapi.PortRange{Start: 443, End: 443}}
	if err != nil || !f.set[want] {
		t.Fatalf("add -s prod -o acme: %v, agent has %v\n%s", err, f.list(), out)
	}
	if !strings.Contains(out, "to app acme/prod/b (tcp 443)") {
		t.Errorf("add printed %q", out)
	}
	// A qualified source is named in full.
	if _, err := execCmd(t, addPolicyCmd(), "acme/dev/a", "c", "--space", "prod", "--org", "acme", "--protocol", "icmp"); err != nil {
		t.Fatal(err)
	}
	n := len(f.reqs)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"a", "b", "-s", "prod"}, "-s prod needs -o ORG"},
		{[]string{"a", "b", "-o", "acme"}, "-o acme needs -s SPACE"},
		{[]string{"a", "acme/prod/b", "-s", "prod", "-o", "acme"}, "already ORG/SPACE/APP"},
		{[]string{"a", "b", "-s", "pr/od", "-o", "acme"}, `-s "pr/od": must be`},
		{[]string{"a", "b", "-s", "prod", "-o", "ac me"}, `-o "ac me": must be`},
		{[]string{"a/b", "c"}, `invalid source app "a/b"`},
	} {
		if _, err := execCmd(t, addPolicyCmd(), tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("add %v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	if len(f.reqs) != n {
		t.Errorf("refused commands reached the agent: %v", f.reqs[n:])
	}

	out, err = execCmd(t, listPoliciesCmd())
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n")[1:] {
		rows[strings.Join(strings.Fields(l), " ")] = true
	}
	for _, r := range []string{"a b tcp 443 prod acme", "acme/dev/a c icmp - prod acme"} {
		if !rows[r] {
			t.Errorf("no row %q in\n%s", r, out)
		}
	}

	out, err = execCmd(t, removePolicyCmd(), "a", "b", "-s", "prod", "-o", "acme", "--protocol", "tcp", "--port", "443")
	if err != nil || f.set[want] || !strings.HasSuffix(out, "(tcp 443)...\nOK\n") {
		t.Errorf("remove -s prod -o acme: %v, agent has %v\n%s", err, f.list(), out)
	}
}
