package engine

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine/pkttest"
)

// TestDeniedPairs: every denied packet is counted under its app pair and
// verdict; the top pairs come first and the rest are summed as Other.
func TestDeniedPairs(t *testing.T) {
	e := newTestEngine(t, Config{})
	run(t, e, []step{
		{"no rule", in, syn(ap(ipA, 1), ap(ipB, 1)), DropNoPolicy},
		{"no rule again", in, syn(ap(ipA, 2), ap(ipB, 2)), DropNoPolicy},
		{"reverse", in, syn(ap(ipD, 3), ap(ipB, 8080)), DropNoPolicy},
		{"unregistered", in, syn(ap(ipX, 4), ap(ipB, 8080)), DropUnknownSource},
		{"spoofed", out, syn(ap(ipY, 5), ap(ipA, 8080)), DropSpoofed},
		{"fragment", in, pkttest.Fragment4(pkttest.UDP(ap(ipA, 6), ap(ipB, 53), make([]byte, 100)), 48)[1], DropFragment},
		{"allowed: not counted", in, syn(ap(ipA, 7), ap(ipB, 8080)), Accept},
	})
	got := map[string]uint64{}
	for _, p := range e.DeniedPairs(10) {
		for v, n := range p.Verdicts {
			if n > 0 {
				got[fmt.Sprintf("%s>%s/%s", p.Source, p.Destination, Verdict(v))] = n
			}
		}
	}
	want := map[string]uint64{
		"appA>appB/no_policy": 2, "appD>appB/no_policy": 1, ">appB/unknown_source": 1,
		">appA/spoofed": 1, "appA>appB/fragment": 1,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("denied pairs %v, want %v", got, want)
	}
	top := e.DeniedPairs(1)
	if len(top) != 2 || top[0].Source != "appA" || top[0].Total() != 3 || !top[1].Other || top[1].Total() != 3 {
		t.Fatalf("top 1: %+v, want appA>appB with 3 and Other with 3", top)
	}
}

// TestDeniedPairsBounded: pairs beyond maxDeniedPairs are counted
// together, so the table does not grow.
func TestDeniedPairsBounded(t *testing.T) {
	var d deniedPairs
	for i := range maxDeniedPairs + 10 {
		d.add(fmt.Sprint("s", i), "dst", DropNoPolicy)
	}
	d.add("s0", "dst", DropNoPolicy)
	if len(d.pairs) != maxDeniedPairs || d.over[DropNoPolicy] != 10 || d.pairs[appPair{"s0", "dst"}][DropNoPolicy] != 2 {
		t.Fatalf("%d pairs, %d over, s0 %d", len(d.pairs), d.over[DropNoPolicy], d.pairs[appPair{"s0", "dst"}][DropNoPolicy])
	}
}

// TestFlowLogDirection: outbound and hair-pinned flows say so; a
// hair-pinned accept names its rule, an outbound one does not (the
// destination cell judges it).
func TestFlowLogDirection(t *testing.T) {
	e := newTestEngine(t, Config{})
	w := make(lineWriter, 10)
	e.SetFlowLog(jsonLines(w))
	run(t, e, []step{
		{"outbound new", out, syn(ap(ipB, 40000), ap(ipD, 8080)), Accept},
		{"hairpin new", out, syn(ap(ipC, 40001), ap(ipB, 9000)), AcceptLocal},
		{"hairpin denied", out, syn(ap(ipB, 40002), ap(ipC, 9000)), DropNoPolicy},
	})
	e.SetFlowLog(nil)
	close(w)
	want := []map[string]string{
		{"direction": "outbound", "verdict": "accept", "rule": ""},
		{"direction": "local", "verdict": "accept", "rule": "appC>appB/tcp/9000-9000"},
		{"direction": "local", "verdict": "no_policy", "rule": ""},
	}
	i := 0
	for l := range w {
		var m map[string]string
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		if i >= len(want) {
			t.Fatalf("extra line %s", l)
		}
		for k, v := range want[i] {
			if m[k] != v {
				t.Errorf("line %d %s: %s = %q, want %q", i, l, k, m[k], v)
			}
		}
		i++
	}
	if i != len(want) {
		t.Fatalf("%d lines, want %d", i, len(want))
	}
}

// TestRuleFor: the first rule in SortRules order that allows the flow,
// from sorted and unsorted rule sets alike.
func TestRuleFor(t *testing.T) {
	rules := []policy.Rule{
		{Source: "a", Destination: "b", Protocol: policy.ProtoUDP, Ports: policy.PortRange{Start: 1, End: 100}},
		{Source: "a", Destination: "b", Protocol: policy.ProtoAll, Ports: policy.PortRange{Start: 50, End: 60}},
		{Source: "a", Destination: "b", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 8080, End: 8090}},
		{Source: "a", Destination: "c", Protocol: policy.ProtoICMP},
	}
	tbl := Compile(TableConfig{Rules: rules})
	cases := []struct {
		src, dst string
		proto    policy.Protocol
		port     uint16
		want     string
	}{
		{"a", "b", policy.ProtoTCP, 8085, "a>b/tcp/8080-8090"},
		{"a", "b", policy.ProtoTCP, 55, "a>b/all/50-60"},
		{"a", "b", policy.ProtoUDP, 55, "a>b/udp/1-100"},
		{"a", "b", policy.ProtoTCP, 100, ""},
		{"a", "c", policy.ProtoICMP, 0, "a>c/icmp/0-0"},
		{"a", "c", policy.ProtoTCP, 1, ""},
		{"b", "a", policy.ProtoUDP, 55, ""},
	}
	for _, c := range cases {
		r, ok := tbl.RuleFor(c.src, c.dst, c.proto, c.port)
		if got := map[bool]string{true: r.Key(), false: ""}[ok]; got != c.want {
			t.Errorf("RuleFor(%s, %s, %s, %d) = %q, want %q", c.src, c.dst, c.proto, c.port, got, c.want)
		}
	}
}
