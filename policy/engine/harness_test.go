package engine

import (
	"net/netip"
	"testing"

	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine/pkttest"
)

// The test cell owns 10.255.1.0/24 and fd00:1::/64. appB and appC run
// here; appA and appD run on another cell. Rules:
//
//	appA -> appB tcp 8080, udp 53, icmp
//	appC -> appB tcp 9000   (hair-pinned: both local)
//	appB -> appD tcp 8080   (appD -> appB is the reverse: not allowed)
var (
	ipA  = netip.MustParseAddr("10.255.2.10")
	ipB  = netip.MustParseAddr("10.255.1.20")
	ipC  = netip.MustParseAddr("10.255.1.30")
	ipD  = netip.MustParseAddr("10.255.2.40")
	ipX  = netip.MustParseAddr("10.255.2.99") // not registered, remote
	ipY  = netip.MustParseAddr("10.255.1.99") // not registered, in the local subnet
	ipA6 = netip.MustParseAddr("fd00:2::10")
	ipB6 = netip.MustParseAddr("fd00:1::20")

	localSubnet = netip.MustParsePrefix("10.255.1.0/24")

	testEndpoints = []Endpoint{
		{IP: ipA, App: "appA"},
		{IP: ipB, App: "appB", Local: true},
		{IP: ipC, App: "appC", Local: true},
		{IP: ipD, App: "appD"},
		{IP: ipA6, App: "appA"},
		{IP: ipB6, App: "appB", Local: true},
	}
	testRules = []policy.Rule{
		{Source: "appA", Destination: "appB", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 8080, End: 8080}},
		{Source: "appA", Destination: "appB", Protocol: policy.ProtoUDP, Ports: policy.PortRange{Start: 53, End: 53}},
		{Source: "appA", Destination: "appB", Protocol: policy.ProtoICMP},
		{Source: "appC", Destination: "appB", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 9000, End: 9000}},
		{Source: "appB", Destination: "appD", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 8080, End: 8080}},
	}
)

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func testTable(rules []policy.Rule) *Table {
	return Compile(TableConfig{Rules: rules, Endpoints: testEndpoints, LocalSubnet: localSubnet})
}

// newTestEngine returns an engine with the test table and a manual clock.
func newTestEngine(t testing.TB, cfg Config) *Engine {
	t.Helper()
	e := NewEngine(cfg)
	e.clk = newManualClock()
	e.rl.seed = 1 // deterministic buckets: the rate-limit test needs two sources apart
	e.SetTable(testTable(testRules))
	return e
}

// without returns rules minus the i-th.
func without(rules []policy.Rule, i int) []policy.Rule {
	out := append([]policy.Rule(nil), rules[:i]...)
	return append(out, rules[i+1:]...)
}

type dir int

const (
	in dir = iota
	out
)

func (d dir) String() string { return [...]string{"Inbound", "Outbound"}[d] }

// step is one packet through the engine and the verdict expected.
type step struct {
	name string
	dir  dir
	pkt  []byte
	want Verdict
}

func run(t *testing.T, e *Engine, steps []step) {
	t.Helper()
	for _, s := range steps {
		var got Verdict
		if s.dir == in {
			got = e.Inbound(s.pkt)
		} else {
			got = e.Outbound(s.pkt)
		}
		if got != s.want {
			t.Errorf("%s: %v = %v, want %v", s.name, s.dir, got, s.want)
		}
	}
}

func syn(src, dst netip.AddrPort) []byte {
	return pkttest.TCP(src, dst, pkttest.SYN, 1000, 0, nil)
}

func ack(src, dst netip.AddrPort) []byte {
	return pkttest.TCP(src, dst, pkttest.ACK, 1001, 5001, []byte("data"))
}

func synack(src, dst netip.AddrPort) []byte {
	return pkttest.TCP(src, dst, pkttest.SYN|pkttest.ACK, 5000, 1001, nil)
}
