package policy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/policy/pkttest"
)

// TestNoAllocs proves the packet path allocates nothing, for established
// and new flows of every protocol, both directions and the reject path.
func TestNoAllocs(t *testing.T) {
	e := newTestEngine(t, Config{MaxFlows: 1024})
	a, b := ap(ipA, 40000), ap(ipB, 8080)
	established := map[string]struct {
		d   dir
		pkt []byte
	}{
		"tcp in":      {in, ack(a, b)},
		"tcp out":     {out, ack(b, a)},
		"udp in":      {in, pkttest.UDP(a, ap(ipB, 53), nil)},
		"icmp in":     {in, pkttest.ICMPEcho(ipA, ipB, 1, 1, false)},
		"icmp out":    {out, pkttest.ICMPEcho(ipB, ipA, 1, 1, true)},
		"hairpin":     {out, syn(ap(ipC, 1), ap(ipB, 9000))},
		"tcp6 in":     {in, ack(ap(ipA6, 1), ap(ipB6, 8080))},
		"icmp error":  {in, pkttest.ICMPError(ipA, ipB, 3, 4, ack(b, a))},
		"denied":      {in, syn(a, ap(ipB, 1))},
		"spoofed":     {out, syn(a, b)},
		"malformed":   {in, ack(a, b)[:30]},
		"unsupported": {in, pkttest.IP(ipA, ipB, 47, make([]byte, 8))},
	}
	for name, c := range established {
		verdict := func() {
			if c.d == in {
				e.Inbound(c.pkt)
			} else {
				e.Outbound(c.pkt)
			}
		}
		verdict() // open the flow
		if n := testing.AllocsPerRun(1000, verdict); n != 0 {
			t.Errorf("%s: %v allocs per packet", name, n)
		}
	}

	// New flows: the table is full, so every one evicts another.
	for i := range 4096 {
		e.Outbound(syn(ap(ipB, uint16(i)), ap(ipD, 1)))
	}
	newFlows := map[string]func(i int) []byte{
		"tcp in":  func(i int) []byte { return syn(ap(ipA, uint16(i)), b) },
		"tcp out": func(i int) []byte { return syn(ap(ipB, uint16(i)), ap(ipD, 2)) },
		"udp in":  func(i int) []byte { return pkttest.UDP(ap(ipA, uint16(i)), ap(ipB, 53), nil) },
		"icmp in": func(i int) []byte { return pkttest.ICMPEcho(ipA, ipB, uint16(i), 1, false) },
	}
	for name, mk := range newFlows {
		pkts := make([][]byte, 3000)
		for i := range pkts {
			pkts[i] = mk(i + 1)
		}
		i := 0
		n := testing.AllocsPerRun(len(pkts)-1, func() {
			if name == "tcp out" {
				e.Outbound(pkts[i])
			} else {
				e.Inbound(pkts[i])
			}
			i++
		})
		if n != 0 {
			t.Errorf("new %s: %v allocs per packet", name, n)
		}
	}

	rej := make([]byte, 1500)
	for name, pkt := range map[string][]byte{
		"rst":         syn(a, ap(ipB, 1)),
		"unreachable": pkttest.UDP(a, ap(ipB, 1), nil),
	} {
		if n := testing.AllocsPerRun(100, func() { e.Reject(pkt, rej) }); n != 0 {
			t.Errorf("Reject %s: %v allocs", name, n)
		}
	}
}

// benchEngine returns an engine with n rules between n apps (plus the test
// rules), the test endpoints and 100k tracked flows.
func benchEngine(b *testing.B, n int) *Engine {
	rules := append([]Rule(nil), testRules...)
	eps := append([]Endpoint(nil), testEndpoints...)
	for i := range n {
		src, dst := fmt.Sprintf("src%d", i%(n/10+1)), fmt.Sprintf("dst%d", i%97)
		rules = append(rules, Rule{Source: src, Destination: dst, Protocol: ProtoTCP, Ports: PortRange{uint16(1 + i%60000), uint16(1 + i%60000)}})
		eps = append(eps, Endpoint{IP: netip.AddrFrom4([4]byte{10, 254, byte(i >> 8), byte(i)}), App: src})
	}
	e := NewEngine(Config{})
	e.SetTable(Compile(TableConfig{Rules: rules, Endpoints: eps, LocalSubnet: localSubnet}))
	for i := range 100_000 {
		e.Outbound(syn(ap(ipB, uint16(i)), ap(netip.AddrFrom4([4]byte{10, 255, 2, byte(100 + i>>16)}), 443)))
	}
	return e
}

func BenchmarkVerdict(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		e := benchEngine(b, n)
		a, d := ap(ipA, 40000), ap(ipB, 8080)
		pkt := ack(a, d)
		e.Inbound(syn(a, d))
		b.Run(fmt.Sprintf("established/rules=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(pkt)))
			for b.Loop() {
				if e.Inbound(pkt) != Accept {
					b.Fatal("denied")
				}
			}
		})
		b.Run(fmt.Sprintf("established-reply/rules=%d", n), func(b *testing.B) {
			reply := ack(d, a)
			b.ReportAllocs()
			for b.Loop() {
				if e.Outbound(reply) != Accept {
					b.Fatal("denied")
				}
			}
		})
		b.Run(fmt.Sprintf("new/rules=%d", n), func(b *testing.B) {
			pkts := make([][]byte, 1<<16)
			for i := range pkts {
				pkts[i] = syn(ap(ipA, uint16(i)), d)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				// Each SYN is new once per round of 65536 packets: forget
				// them between rounds so that every packet stays a new flow.
				if i&(len(pkts)-1) == 0 && i > 0 {
					b.StopTimer()
					for _, p := range pkts {
						forget(e, p)
					}
					b.StartTimer()
				}
				if e.Inbound(pkts[i&(len(pkts)-1)]) != Accept {
					b.Fatal("denied")
				}
				i++
			}
		})
	}
}

// forget removes the conntrack entry of pkt's flow.
func forget(e *Engine, pkt []byte) {
	var p packet
	parse(pkt, &p)
	k, _ := flowKeyOf(&p.src, &p.dst, p.sport, p.dport, p.proto)
	sh := e.ct.shard(&k)
	sh.mu.Lock()
	delete(sh.flows, k)
	sh.mu.Unlock()
}
