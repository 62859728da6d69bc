package engine

import (
	"net/netip"
	"testing"

	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine/pkttest"
)

// TestCellHosts: the cell hosts' own addresses are endpoints of HostApp.
// Another cell's host reaches a local container only with an ingress rule
// from the cell hosts (FromHost) for the container's app, port and
// protocol; this cell's host opens flows to remote containers and gets
// their answers; a rule's removal cuts the flow it allowed.
func TestCellHosts(t *testing.T) {
	hostLocal := netip.MustParseAddr("10.255.1.1")
	hostRemote := netip.MustParseAddr("10.255.2.1")
	eps := append([]Endpoint{{IP: hostLocal, App: HostApp, Local: true}, {IP: hostRemote, App: HostApp}}, testEndpoints...)
	fromHost := policy.IngressRule{App: "appB", FromHost: true, Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 8080, End: 8080}}
	fromRange := policy.IngressRule{App: "appC", Start: hostRemote, End: hostRemote, Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 9000, End: 9000}}
	table := func(host ...policy.IngressRule) *Table {
		return Compile(TableConfig{Rules: testRules, Endpoints: eps, HostRules: host, LocalSubnet: localSubnet})
	}
	e := newTestEngine(t, Config{})
	e.SetTable(table(fromRange))
	h, b := ap(hostRemote, 40000), ap(ipB, 8080)
	run(t, e, []step{
		{"remote host -> appB without a rule", in, syn(h, b), DropNoPolicy},
		// A rule with a source range is the kernel's (the guard), not the engine's.
		{"remote host -> appC, range rule only", in, syn(h, ap(ipC, 9000)), DropNoPolicy},
	})
	e.SetTable(table(fromRange, fromHost))
	run(t, e, []step{
		{"remote host -> appB with the rule", in, syn(h, b), Accept},
		{"reply", out, synack(b, h), Accept},
		{"other port", in, syn(ap(hostRemote, 40001), ap(ipB, 8081)), DropNoPolicy},
		{"udp", in, pkttest.UDP(ap(hostRemote, 40002), b, nil), DropNoPolicy},
		{"appB -> the remote host", out, syn(ap(ipB, 41000), ap(hostRemote, 22)), Accept},
		{"container -> this cell's host", in, syn(ap(ipA, 41000), ap(hostLocal, 22)), DropNoPolicy},
		// This cell's host opens a flow to a remote container: not spoofed.
		{"local host -> appD", out, syn(ap(hostLocal, 42000), ap(ipD, 8080)), Accept},
		{"appD's answer", in, synack(ap(ipD, 8080), ap(hostLocal, 42000)), Accept},
	})
	e.SetTable(table(fromRange))
	run(t, e, []step{
		{"open flow after the rule's removal", in, ack(h, b), DropRevoked},
	})
	if c := e.Counters().Verdicts[DropSpoofed]; c != 0 {
		t.Errorf("spoofed = %d, want 0", c)
	}
}
