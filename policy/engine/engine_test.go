package engine

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine/pkttest"
)

func TestVerdicts(t *testing.T) {
	a, b, c, d := ap(ipA, 40000), ap(ipB, 8080), ap(ipC, 41000), ap(ipD, 42000)
	tests := []struct {
		name  string
		steps []step
	}{
		{"tcp allowed flow passes both ways", []step{
			{"syn", in, syn(a, b), Accept},
			{"syn-ack", out, synack(b, a), Accept},
			{"ack", in, ack(a, b), Accept},
			{"data back", out, ack(b, a), Accept},
			{"fin", in, pkttest.TCP(a, b, pkttest.FIN|pkttest.ACK, 1005, 5001, nil), Accept},
		}},
		{"tcp over ipv6", []step{
			{"syn", in, syn(ap(ipA6, 40000), ap(ipB6, 8080)), Accept},
			{"syn-ack", out, synack(ap(ipB6, 8080), ap(ipA6, 40000)), Accept},
			{"other port", in, syn(ap(ipA6, 40000), ap(ipB6, 8081)), DropNoPolicy},
		}},
		{"reverse of a rule is denied", []step{
			// appB -> appD is allowed, appD -> appB is not.
			{"appD -> appB", in, syn(d, ap(ipB, 8080)), DropNoPolicy},
		}},
		{"other port denied", []step{
			{"8081", in, syn(a, ap(ipB, 8081)), DropNoPolicy},
			{"8079", in, syn(a, ap(ipB, 8079)), DropNoPolicy},
			{"udp on the tcp port", in, pkttest.UDP(a, b, []byte("x")), DropNoPolicy},
		}},
		{"udp", []step{
			{"query", in, pkttest.UDP(a, ap(ipB, 53), []byte("q")), Accept},
			{"answer", out, pkttest.UDP(ap(ipB, 53), a, []byte("a")), Accept},
			{"next query", in, pkttest.UDP(a, ap(ipB, 53), []byte("q")), Accept},
			{"other port", in, pkttest.UDP(a, ap(ipB, 54), []byte("q")), DropNoPolicy},
		}},
		{"icmp echo", []step{
			{"request", in, pkttest.ICMPEcho(ipA, ipB, 7, 1, false), Accept},
			{"reply", out, pkttest.ICMPEcho(ipB, ipA, 7, 1, true), Accept},
			{"request v6", in, pkttest.ICMPEcho(ipA6, ipB6, 7, 1, false), Accept},
			{"reply v6", out, pkttest.ICMPEcho(ipB6, ipA6, 7, 1, true), Accept},
			{"no icmp rule", in, pkttest.ICMPEcho(ipD, ipB, 8, 1, false), DropNoPolicy},
			{"unsolicited reply", in, pkttest.ICMPEcho(ipA, ipB, 9, 1, true), DropNoPolicy},
			{"icmp timestamp", in, pkttest.IP(ipA, ipB, pkttest.ProtoICMP, append([]byte{13}, make([]byte, 19)...)), DropUnsupported},
		}},
		{"hairpin", []step{
			{"c -> b allowed", out, syn(c, ap(ipB, 9000)), AcceptLocal},
			{"reply", out, synack(ap(ipB, 9000), c), AcceptLocal},
			{"ack", out, ack(c, ap(ipB, 9000)), AcceptLocal},
			{"b -> c denied", out, syn(ap(ipB, 41001), ap(ipC, 9000)), DropNoPolicy},
			{"c -> b other port", out, syn(c, ap(ipB, 9001)), DropNoPolicy},
			{"unregistered local dst", out, syn(c, ap(ipY, 9000)), DropUnknownDestination},
		}},
		{"spoofed source", []step{
			{"remote app's ip", out, syn(a, ap(ipD, 8080)), DropSpoofed},
			{"unregistered ip", out, syn(ap(ipY, 1), ap(ipD, 8080)), DropSpoofed},
			{"remote ip as a reply", out, ack(a, ap(ipB, 8080)), DropSpoofed},
		}},
		{"unknown destination", []step{
			{"unregistered", in, syn(a, ap(ipY, 8080)), DropUnknownDestination},
			{"remote endpoint", in, syn(a, ap(ipD, 8080)), DropUnknownDestination},
		}},
		{"unknown source", []step{
			{"unregistered", in, syn(ap(ipX, 1), b), DropUnknownSource},
		}},
		{"reply of an outbound flow", []step{
			{"b -> a:443", out, syn(ap(ipB, 45000), ap(ipA, 443)), Accept},
			{"reply", in, synack(ap(ipA, 443), ap(ipB, 45000)), Accept},
			{"other port", in, synack(ap(ipA, 443), ap(ipB, 45001)), DropNoPolicy},
			{"udp out", out, pkttest.UDP(ap(ipB, 5000), ap(ipD, 5001), nil), Accept},
			{"udp reply", in, pkttest.UDP(ap(ipD, 5001), ap(ipB, 5000), nil), Accept},
			{"ping out", out, pkttest.ICMPEcho(ipB, ipD, 3, 1, false), Accept},
			{"ping reply", in, pkttest.ICMPEcho(ipD, ipB, 3, 1, true), Accept},
		}},
		{"a RST opens nothing", []step{
			{"rst out", out, pkttest.TCP(ap(ipB, 8080), ap(ipA, 46000), pkttest.RST, 1, 0, nil), Accept},
			{"then a is not a reply", in, ack(ap(ipA, 46000), ap(ipB, 8080)), Accept}, // allowed by the rule itself
			{"rst out 2", out, pkttest.TCP(ap(ipB, 9999), ap(ipA, 46000), pkttest.RST, 1, 0, nil), Accept},
			{"no return path", in, ack(ap(ipA, 46000), ap(ipB, 9999)), DropNoPolicy},
		}},
		{"non-IP", []step{
			{"in", in, []byte{0x00, 1, 2, 3}, DropUnsupported},
			{"out", out, []byte{0x50, 1, 2, 3}, DropUnsupported},
			{"gre", in, pkttest.IP(ipA, ipB, 47, make([]byte, 8)), DropUnsupported},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run(t, newTestEngine(t, Config{}), tt.steps)
		})
	}
}

// TestRevoke removes the rule of an established flow; its next packet is
// dropped whichever end sends it, and the other end is refused afterwards.
func TestRevoke(t *testing.T) {
	a, b := ap(ipA, 40000), ap(ipB, 8080)
	for _, first := range []dir{in, out} {
		t.Run("first packet "+first.String(), func(t *testing.T) {
			e := newTestEngine(t, Config{})
			run(t, e, []step{
				{"syn", in, syn(a, b), Accept},
				{"syn-ack", out, synack(b, a), Accept},
			})
			e.SetTable(testTable(without(testRules, 0)))
			fromA, fromB := step{"a", in, ack(a, b), DropRevoked}, step{"b", out, ack(b, a), DropRevoked}
			if first == in {
				run(t, e, []step{fromA, fromB})
			} else {
				run(t, e, []step{fromB, fromA})
			}
			if got := e.Counters().Verdicts[DropRevoked]; got != 2 {
				t.Errorf("revoked counter = %d, want 2", got)
			}
			// The tombstone goes with the closing timeout; then the flow is
			// simply unknown.
			e.clk.advance(11 * time.Second)
			if n := e.ExpireFlows(e.clk.epoch.Add(time.Duration(e.clk.now()))); n != 1 {
				t.Errorf("ExpireFlows = %d, want 1 (the tombstone)", n)
			}
			run(t, e, []step{{"a after expiry", in, ack(a, b), DropNoPolicy}})
		})
	}
}

// TestRevokeRSTGoesOut: the RST that answers a packet of a revoked flow is
// written into the TUN and comes back through Outbound on its way to the
// remote sender; the flow's tombstone must not swallow it.
func TestRevokeRSTGoesOut(t *testing.T) {
	a, b := ap(ipA, 40000), ap(ipB, 8080)
	e := newTestEngine(t, Config{})
	run(t, e, []step{
		{"syn", in, syn(a, b), Accept},
		{"syn-ack", out, synack(b, a), Accept},
	})
	e.SetTable(testTable(without(testRules, 0)))
	req := ack(a, b)
	if v := e.Inbound(req); v != DropRevoked {
		t.Fatalf("request after removal = %v, want revoked", v)
	}
	rst := make([]byte, 1500)
	n := e.Reject(req, rst)
	if n == 0 {
		t.Fatal("no reject for a revoked flow")
	}
	run(t, e, []step{
		{"our RST leaves", out, rst[:n], Accept},
		{"b's data does not", out, ack(b, a), DropRevoked},
	})
}

func TestRevokeOtherReasons(t *testing.T) {
	a, b := ap(ipA, 40000), ap(ipB, 8080)
	t.Run("unrelated change keeps the flow", func(t *testing.T) {
		e := newTestEngine(t, Config{})
		run(t, e, []step{{"syn", in, syn(a, b), Accept}})
		e.SetTable(testTable(without(testRules, 1))) // remove the udp rule
		run(t, e, []step{{"ack", in, ack(a, b), Accept}, {"back", out, ack(b, a), Accept}})
	})
	t.Run("unrelated change keeps the flow of a lower opener", func(t *testing.T) {
		// The opener's address below the destination's: the entry must
		// record that side a opened the flow (flOrigA), or revalidation
		// checks the rule the wrong way round and cuts the flow.
		lowA := netip.MustParseAddr("10.255.0.10")
		eps := append([]Endpoint{{IP: lowA, App: "appA"}}, testEndpoints...)
		e := newTestEngine(t, Config{})
		e.SetTable(Compile(TableConfig{Rules: testRules, Endpoints: eps, LocalSubnet: localSubnet}))
		la := ap(lowA, 40000)
		run(t, e, []step{{"syn", in, syn(la, b), Accept}})
		e.SetTable(Compile(TableConfig{Rules: without(testRules, 1), Endpoints: eps, LocalSubnet: localSubnet}))
		run(t, e, []step{{"ack", in, ack(la, b), Accept}, {"back", out, ack(b, la), Accept}})
	})
	t.Run("source endpoint gone", func(t *testing.T) {
		e := newTestEngine(t, Config{})
		run(t, e, []step{{"syn", in, syn(a, b), Accept}})
		e.SetTable(Compile(TableConfig{Rules: testRules, Endpoints: testEndpoints[1:], LocalSubnet: localSubnet}))
		run(t, e, []step{{"ack", in, ack(a, b), DropRevoked}})
	})
	t.Run("local container of an outbound flow gone", func(t *testing.T) {
		e := newTestEngine(t, Config{})
		run(t, e, []step{{"out", out, syn(b, a), Accept}})
		eps := append([]Endpoint{testEndpoints[0]}, testEndpoints[2:]...)
		e.SetTable(Compile(TableConfig{Rules: testRules, Endpoints: eps, LocalSubnet: localSubnet}))
		run(t, e, []step{{"reply", in, ack(a, b), DropUnknownDestination}})
	})
	t.Run("rule restored", func(t *testing.T) {
		e := newTestEngine(t, Config{})
		run(t, e, []step{{"syn", in, syn(a, b), Accept}})
		e.SetTable(testTable(without(testRules, 0)))
		run(t, e, []step{{"cut", in, ack(a, b), DropRevoked}})
		e.SetTable(testTable(testRules))
		run(t, e, []step{{"again", in, ack(a, b), Accept}, {"back", out, ack(b, a), Accept}})
	})
	t.Run("hairpin", func(t *testing.T) {
		e := newTestEngine(t, Config{})
		c, b9 := ap(ipC, 41000), ap(ipB, 9000)
		run(t, e, []step{{"syn", out, syn(c, b9), AcceptLocal}})
		e.SetTable(testTable(without(testRules, 3)))
		run(t, e, []step{{"reply", out, synack(b9, c), DropRevoked}, {"next", out, ack(c, b9), DropRevoked}})
	})
}

func TestICMPErrors(t *testing.T) {
	a, b := ap(ipA, 40000), ap(ipB, 8080)
	e := newTestEngine(t, Config{})
	// appB opened a flow to appD; appD's side answers with an error.
	sent := pkttest.UDP(ap(ipB, 5000), ap(ipD, 5001), []byte("hello"))
	run(t, e, []step{
		{"untracked error", in, pkttest.ICMPError(ipD, ipB, 3, 3, sent), DropNoPolicy},
		{"udp out", out, sent, Accept},
		{"port unreachable", in, pkttest.ICMPError(ipD, ipB, 3, 3, sent), Accept},
		{"time exceeded", in, pkttest.ICMPError(ipD, ipB, 11, 0, sent), Accept},
		{"error to someone else", in, pkttest.ICMPError(ipD, ipC, 3, 3, sent), DropNoPolicy},
		{"error from anyone", in, pkttest.ICMPError(ipX, ipB, 3, 4, sent), Accept},
		{"error quoting another port", in,
			pkttest.ICMPError(ipD, ipB, 3, 3, pkttest.UDP(ap(ipB, 5000), ap(ipD, 5002), nil)), DropNoPolicy},
		// The reply direction of an inbound flow (path MTU discovery).
		{"syn", in, syn(a, b), Accept},
		{"frag needed for a reply", in, pkttest.ICMPError(ipA, ipB, 3, 4, synack(b, a)), Accept},
		{"truncated quote", in, pkttest.ICMPError(ipD, ipB, 3, 3, sent[:27]), DropMalformed},
		{"errors out pass", out, pkttest.ICMPError(ipB, ipX, 3, 3, pkttest.UDP(ap(ipX, 1), ap(ipB, 2), nil)), Accept},
	})
	// v6: packet too big for a tracked flow.
	sent6 := pkttest.TCP(ap(ipB6, 5000), ap(ipA6, 443), pkttest.SYN, 1, 0, nil)
	run(t, e, []step{
		{"v6 untracked", in, pkttest.ICMPError(ipA6, ipB6, 2, 0, sent6), DropNoPolicy},
		{"v6 out", out, sent6, Accept},
		{"v6 packet too big", in, pkttest.ICMPError(ipA6, ipB6, 2, 0, sent6), Accept},
	})
	if n := e.Flows(); n != 3 {
		t.Errorf("Flows = %d, want 3 (errors create no entries)", n)
	}
}

func TestFragments(t *testing.T) {
	e := newTestEngine(t, Config{})
	big := pkttest.UDP(ap(ipA, 40000), ap(ipB, 53), make([]byte, 100))
	frags := pkttest.Fragment4(big, 48)
	if len(frags) != 3 {
		t.Fatalf("%d fragments", len(frags))
	}
	run(t, e, []step{
		{"later fragment first", in, frags[1], DropFragment},
		{"first", in, frags[0], Accept},
		{"second", in, frags[1], Accept},
		{"third", in, frags[2], Accept},
	})
	denied := pkttest.Fragment4(pkttest.UDP(ap(ipA, 40000), ap(ipB, 54), make([]byte, 100)), 48)
	for i := range denied {
		denied[i][5] = 0x99 // another IP id
	}
	run(t, e, []step{
		{"denied first", in, denied[0], DropNoPolicy},
		{"denied second", in, denied[1], DropFragment},
	})
	hp := pkttest.Fragment4(pkttest.TCP(ap(ipC, 41000), ap(ipB, 9000), pkttest.ACK, 1, 1, make([]byte, 100)), 64)
	run(t, e, []step{{"hairpin first", out, hp[0], AcceptLocal}, {"hairpin second", out, hp[1], AcceptLocal}})
}

func TestTCPClosing(t *testing.T) {
	a, b := ap(ipA, 40000), ap(ipB, 8080)
	e := newTestEngine(t, Config{})
	run(t, e, []step{{"syn", in, syn(a, b), Accept}, {"syn-ack", out, synack(b, a), Accept}})
	e.clk.advance(30 * time.Minute)
	run(t, e, []step{{"idle but alive", out, ack(b, a), Accept}})
	run(t, e, []step{{"rst", out, pkttest.TCP(b, a, pkttest.RST, 5001, 0, nil), Accept}})
	e.clk.advance(11 * time.Second)
	// Expired entries behave as absent: a is a new flow (allowed by the
	// rule), b's packet opens a new outbound one.
	if e.ExpireFlows(e.clk.epoch.Add(time.Duration(e.clk.now()))) != 1 {
		t.Error("closing flow not expired after TCPClosing")
	}
	e2 := newTestEngine(t, Config{})
	run(t, e2, []step{{"out", out, syn(ap(ipB, 1234), ap(ipD, 80)), Accept}})
	e2.clk.advance(time.Hour + time.Second)
	run(t, e2, []step{{"late reply", in, ack(ap(ipD, 80), ap(ipB, 1234)), DropNoPolicy}})
}

func TestMalformedPrefixes(t *testing.T) {
	a, b := ap(ipA, 40000), ap(ipB, 8080)
	pkts := map[string][]byte{
		"tcp4":     ack(a, b),
		"udp4":     pkttest.UDP(a, ap(ipB, 53), []byte("query")),
		"icmp4":    pkttest.ICMPEcho(ipA, ipB, 1, 1, false),
		"icmperr4": pkttest.ICMPError(ipD, ipB, 3, 3, pkttest.UDP(ap(ipB, 1), ap(ipD, 2), nil)),
		"tcp6":     ack(ap(ipA6, 40000), ap(ipB6, 8080)),
		"udp6":     pkttest.UDP(ap(ipA6, 40000), ap(ipB6, 53), []byte("query")),
		"icmp6":    pkttest.ICMPEcho(ipA6, ipB6, 1, 1, false),
	}
	for name, pkt := range pkts {
		e := newTestEngine(t, Config{})
		for n := 0; n < len(pkt); n++ {
			for _, d := range []dir{in, out} {
				var v Verdict
				if d == in {
					v = e.Inbound(pkt[:n])
				} else {
					v = e.Outbound(pkt[:n])
				}
				if v != DropMalformed {
					t.Errorf("%s: %v of the first %d of %d bytes = %v, want malformed", name, d, n, len(pkt), v)
				}
			}
		}
		if v := e.Inbound(pkt); v == DropMalformed {
			t.Errorf("%s: whole packet is malformed", name)
		}
	}
}

func TestVerdictStrings(t *testing.T) {
	want := []string{"accept", "accept_local", "no_policy", "revoked", "spoofed", "unknown_source",
		"unknown_destination", "malformed", "unsupported", "conntrack_full", "fragment"}
	var c Counters
	i := 0
	for v := range c.All() {
		if v.String() != want[i] {
			t.Errorf("Verdict(%d) = %q, want %q", v, v.String(), want[i])
		}
		if v.Allowed() != (v == Accept || v == AcceptLocal) || v.Reject() != (v == DropNoPolicy || v == DropRevoked || v == DropUnknownSource) {
			t.Errorf("%v: Allowed/Reject wrong", v)
		}
		i++
	}
	if i != len(want) {
		t.Errorf("All yielded %d verdicts, want %d", i, len(want))
	}
	for i, name := range want {
		if v, ok := ParseVerdict(name); !ok || v != Verdict(i) {
			t.Errorf("ParseVerdict(%q) = %v %v, want %d", name, v, ok, i)
		}
	}
	if _, ok := ParseVerdict("invalid"); ok {
		t.Error(`ParseVerdict("invalid") ok`)
	}
}

func TestCounters(t *testing.T) {
	e := newTestEngine(t, Config{})
	e.Inbound(syn(ap(ipA, 1), ap(ipB, 8080)))
	e.Inbound(syn(ap(ipA, 2), ap(ipB, 8080)))
	e.Inbound(syn(ap(ipA, 2), ap(ipB, 1)))
	e.Outbound([]byte{0x45})
	c := e.Counters()
	if c.Verdicts[Accept] != 2 || c.Verdicts[DropNoPolicy] != 1 || c.Verdicts[DropMalformed] != 1 {
		t.Errorf("counters %v", c.Verdicts)
	}
}

func TestProtoAll(t *testing.T) {
	e := NewEngine(Config{})
	e.clk = newManualClock()
	rules := append(testRules[:len(testRules):len(testRules)], policy.Rule{Source: "appD", Destination: "appB", Protocol: policy.ProtoAll, Ports: policy.PortRange{Start: 100, End: 200}})
	e.SetTable(testTable(rules))
	d := ap(ipD, 40000)
	run(t, e, []step{
		{"tcp in range", in, syn(d, ap(ipB, 150)), Accept},
		{"udp in range", in, pkttest.UDP(d, ap(ipB, 100), nil), Accept},
		{"icmp ignores ports", in, pkttest.ICMPEcho(ipD, ipB, 1, 1, false), Accept},
		{"tcp above", in, syn(d, ap(ipB, 201)), DropNoPolicy},
		{"udp below", in, pkttest.UDP(d, ap(ipB, 99), nil), DropNoPolicy},
		{"other protocol", in, pkttest.IP(ipD, ipB, 132, make([]byte, 12)), DropUnsupported},
	})
}

// TestTinyFragments: a TCP fragment at offset 8 or 16 would overwrite the
// flags (or, overlapping, the ports) judged in the first fragment.
func TestTinyFragments(t *testing.T) {
	e := newTestEngine(t, Config{})
	frags := pkttest.Fragment4(pkttest.TCP(ap(ipA, 40000), ap(ipB, 8080), pkttest.ACK, 1, 1, make([]byte, 64)), 48)
	run(t, e, []step{{"first", in, frags[0], Accept}, {"second", in, frags[1], Accept}})
	for _, off := range []uint16{1, 2} {
		tiny := append([]byte(nil), frags[1]...)
		tiny[6], tiny[7] = byte(off>>8), byte(off) // offset off*8, no MF
		// (the header checksum is not checked by the engine)
		if v := e.Inbound(tiny); v != DropMalformed {
			t.Errorf("tcp fragment at offset %d: %v, want malformed", off*8, v)
		}
	}
	// A first fragment that cuts the TCP header short is malformed.
	short := append([]byte(nil), frags[0][:20+16]...)
	short[2], short[3] = 0, 36
	if v := e.Inbound(short); v != DropMalformed {
		t.Errorf("first fragment with 16 bytes of tcp header: %v, want malformed", v)
	}
}

// TestFragmentsOfTrackedFlows: the later fragments of a datagram whose
// first fragment belongs to a tracked flow follow it, whichever path
// accepted the first fragment: the lock-free lookup (the flow verified at
// this generation) or the locked one (after a table change), in both
// directions.
func TestFragmentsOfTrackedFlows(t *testing.T) {
	a, b := ap(ipA, 40000), ap(ipB, 53)
	id := byte(0)
	datagram := func(src, dst netip.AddrPort) [][]byte {
		id++
		frags := pkttest.Fragment4(pkttest.UDP(src, dst, make([]byte, 100)), 48)
		for _, f := range frags {
			f[5] = id // IP identification: one per datagram
		}
		return frags
	}
	for _, changed := range []bool{false, true} {
		t.Run(fmt.Sprintf("table changed=%v", changed), func(t *testing.T) {
			e := newTestEngine(t, Config{})
			first := datagram(a, b)
			run(t, e, []step{{"opening datagram", in, first[0], Accept}, {"its second fragment", in, first[1], Accept}})
			for _, d := range []dir{in, out} {
				if changed {
					e.SetTable(testTable(without(testRules, 3))) // an unrelated rule
				}
				src, dst := a, b
				if d == out {
					src, dst = b, a
				}
				frags := datagram(src, dst)
				for i, f := range frags {
					run(t, e, []step{{fmt.Sprintf("next datagram, fragment %d", i), d, f, Accept}})
				}
			}
		})
	}
}

// TestUnseenFlows: after ResumeTracking (an agent just started, or
// enforcement switched on again), flows may be under way that the engine
// did not see begin. Each is judged by the rules on its next packet,
// whichever end sends it: it passes if a rule allows it with one of its
// ends as the client, and then follows that rule; otherwise it is cut.
// Before, the local end's packet reopened such a flow as the local
// container's own, and the remote end's packets passed as its replies.
func TestUnseenFlows(t *testing.T) {
	a, b, d := ap(ipA, 40000), ap(ipB, 8080), ap(ipD, 42000)
	b7, b45, d80, d8080 := ap(ipB, 7000), ap(ipB, 45000), ap(ipD, 80), ap(ipD, 8080)
	udpB := ap(ipB, 53)
	tests := []struct {
		name  string
		steps []step
	}{
		{"no rule either way, local end first", []step{
			{"b's data", out, ack(b7, d), DropNoPolicy},
			{"d's data", in, ack(d, b7), DropNoPolicy},
			{"b's data again", out, ack(b7, d), DropNoPolicy},
		}},
		{"no rule either way, remote end first", []step{
			{"d's data", in, ack(d, b7), DropNoPolicy},
			{"b's data", out, ack(b7, d), DropNoPolicy},
		}},
		{"remote client under a rule, local end first", []step{
			{"b's data", out, ack(b, a), Accept},
			{"a's data", in, ack(a, b), Accept},
		}},
		{"local client under a rule, remote end first", []step{
			{"d's data", in, ack(d8080, b45), Accept},
			{"b's data", out, ack(b45, d8080), Accept},
		}},
		{"local client without a rule", []step{
			{"b's data", out, ack(b45, d80), DropNoPolicy},
			{"a new connection needs none here", out, syn(b45, d80), Accept},
			{"its reply", in, synack(d80, b45), Accept},
		}},
		{"a RST opens nothing", []step{
			{"d's RST", in, pkttest.TCP(d, b7, pkttest.RST, 1, 0, nil), DropNoPolicy},
			{"b's RST", out, pkttest.TCP(b7, d, pkttest.RST, 1, 0, nil), Accept},
			{"then b's data", out, ack(b7, d), DropNoPolicy},
		}},
		{"udp without a rule, local end first", []step{
			{"b's datagram", out, pkttest.UDP(b7, d, nil), DropNoPolicy},
			{"d's datagram", in, pkttest.UDP(d, b7, nil), DropNoPolicy},
		}},
		{"udp under a rule, local end first", []step{
			{"b's datagram", out, pkttest.UDP(udpB, a, nil), Accept},
			{"a's datagram", in, pkttest.UDP(a, udpB, nil), Accept},
		}},
		{"hairpin under a rule, server first", []step{
			{"b's data", out, ack(ap(ipB, 9000), ap(ipC, 41000)), AcceptLocal},
			{"c's data", out, ack(ap(ipC, 41000), ap(ipB, 9000)), AcceptLocal},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEngine(t, Config{})
			e.ResumeTracking()
			run(t, e, tt.steps)
		})
	}

	// The flows so opened follow the rule that allowed them: removing it
	// cuts them, whichever end sent first.
	t.Run("rule removed", func(t *testing.T) {
		e := newTestEngine(t, Config{})
		e.ResumeTracking()
		run(t, e, []step{
			{"b's data", out, ack(b, a), Accept},
			{"b's datagram", out, pkttest.UDP(udpB, a, nil), Accept},
			{"hairpin, b's data", out, ack(ap(ipB, 9000), ap(ipC, 41000)), AcceptLocal},
		})
		e.SetTable(testTable(without(without(without(testRules, 3), 1), 0)))
		run(t, e, []step{
			{"b's data", out, ack(b, a), DropRevoked},
			{"a's data", in, ack(a, b), DropRevoked},
			{"b's datagram", out, pkttest.UDP(udpB, a, nil), DropRevoked},
			{"hairpin, c's data", out, ack(ap(ipC, 41000), ap(ipB, 9000)), DropRevoked},
		})
	})

	// UDP cannot tell a flow under way from a new one: a datagram is
	// judged so only within a UDPTimeout of ResumeTracking; after that, a
	// flow the engine did not see would have expired anyway.
	t.Run("udp after the window", func(t *testing.T) {
		e := newTestEngine(t, Config{})
		e.ResumeTracking()
		e.clk.advance(61 * time.Second)
		run(t, e, []step{
			{"b's datagram opens b's own flow", out, pkttest.UDP(b7, d, nil), Accept},
			{"d's reply", in, pkttest.UDP(d, b7, nil), Accept},
		})
	})
}

// TestTCPUnanswered checks that a TCP flow nobody answered (a SYN flood of
// random ports from an allowed container) expires after TCPUnanswered,
// while an answered flow keeps TCPTimeout.
func TestTCPUnanswered(t *testing.T) {
	e := newTestEngine(t, Config{})
	const flood = 2000
	for i := range flood {
		p := syn(ap(ipB, uint16(10000+i)), ap(ipD, uint16(20000+i*7%40000)))
		if v := e.Outbound(p); v != Accept {
			t.Fatalf("syn %d: %v", i, v)
		}
	}
	// One answered flow each way: outbound (reply inbound), inbound (reply
	// outbound).
	run(t, e, []step{
		{"out syn", out, syn(ap(ipB, 1234), ap(ipD, 80)), Accept},
		{"in syn-ack", in, synack(ap(ipD, 80), ap(ipB, 1234)), Accept},
		{"in syn", in, syn(ap(ipA, 40000), ap(ipB, 8080)), Accept},
		{"out syn-ack", out, synack(ap(ipB, 8080), ap(ipA, 40000)), Accept},
	})
	if n := e.Flows(); n != flood+2 {
		t.Fatalf("flows after the flood: %d, want %d", n, flood+2)
	}
	e.clk.advance(DefaultConfig().TCPUnanswered + time.Second)
	if n := e.ExpireFlows(e.clk.epoch.Add(time.Duration(e.clk.now()))); n != flood {
		t.Errorf("expired %d flows after TCPUnanswered, want the %d unanswered ones", n, flood)
	}
	if n := e.Flows(); n != 2 {
		t.Errorf("flows left: %d, want the 2 answered ones", n)
	}
	e.clk.advance(30 * time.Minute)
	run(t, e, []step{
		{"answered out, idle but alive", in, ack(ap(ipD, 80), ap(ipB, 1234)), Accept},
		{"answered in, idle but alive", in, ack(ap(ipA, 40000), ap(ipB, 8080)), Accept},
	})
}

// TestQualifiedAppsMatch: a rule naming an ORG/SPACE/APP matches only
// containers registered with that org and space: not the plain app, not
// the same app in another space.
func TestQualifiedAppsMatch(t *testing.T) {
	src := netip.MustParseAddr("10.255.1.2")
	prod, dev, plain := netip.MustParseAddr("10.255.1.3"), netip.MustParseAddr("10.255.1.4"), netip.MustParseAddr("10.255.1.5")
	tab := Compile(TableConfig{
		LocalSubnet: netip.MustParsePrefix("10.255.1.0/24"),
		Endpoints: []Endpoint{{IP: src, App: "acme/prod/web", Local: true}, {IP: prod, App: "acme/prod/db", Local: true},
			{IP: dev, App: "acme/dev/db", Local: true}, {IP: plain, App: "db", Local: true}},
		Rules: []policy.Rule{{Source: "acme/prod/web", Destination: "acme/prod/db", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 5432, End: 5432}}},
	})
	for dst, want := range map[netip.Addr]bool{prod: true, dev: false, plain: false} {
		if got := tab.Allowed(src, dst, policy.ProtoTCP, 5432); got != want {
			t.Errorf("acme/prod/web -> %v: allowed %v, want %v", dst, got, want)
		}
	}
}
