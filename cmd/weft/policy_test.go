package main

import (
	"strings"
	"testing"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/policy"
)

// TestPolicyCLIProtocols: icmp and all rules from the command line, as
// policy files take them: icmp without ports (--port is an error), all
// with a port range or, without --port, every port.
func TestPolicyCLIProtocols(t *testing.T) {
	f := startFakeAgent(t)
	for _, tc := range []struct {
		args []string
		want cell.PolicyRule
		out  string
	}{
		{[]string{"--protocol", "icmp"}, cell.PolicyRule{Source: "a", Destination: "b", Protocol: "icmp"}, "(icmp)"},
		{[]string{"--protocol", "all"}, cell.PolicyRule{Source: "a", Destination: "b", Protocol: "all", Ports: cell.PortRange{Start: 1, End: 65535}}, "(all 1-65535)"},
		{[]string{"--protocol", "all", "--port", "8000-8100"}, cell.PolicyRule{Source: "a", Destination: "b", Protocol: "all", Ports: cell.PortRange{Start: 8000, End: 8100}}, "(all 8000-8100)"},
		{nil, cell.PolicyRule{Source: "a", Destination: "b", Protocol: "tcp", Ports: cell.PortRange{Start: 8080, End: 8080}}, "(tcp 8080)"},
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
	if f.set[cell.PolicyRule{Source: "a", Destination: "b", Protocol: "icmp"}] {
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

// TestSpaceOrgRefused: cf's -s SPACE / -o ORG get a reason, not "unknown
// shorthand flag".
func TestSpaceOrgRefused(t *testing.T) {
	f := startFakeAgent(t)
	for _, args := range [][]string{{"-s", "prod"}, {"-o", "acme", "-s", "prod"}} {
		_, err := execCmd(t, addPolicyCmd(), append([]string{"a", "b"}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "weft has no orgs or spaces") {
			t.Errorf("add %v: %v", args, err)
		}
	}
	if len(f.reqs) != 0 {
		t.Errorf("refused commands reached the agent: %v", f.reqs)
	}
}
