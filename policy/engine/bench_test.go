package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine/pkttest"
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

// benchRules returns n rules between about n/10 source apps and 97
// destination apps (plus the test rules) and one endpoint per source app
// index.
func benchRules(n int) ([]policy.Rule, []Endpoint) {
	rules := append([]policy.Rule(nil), testRules...)
	eps := append([]Endpoint(nil), testEndpoints...)
	for i := range n {
		src, dst := fmt.Sprintf("src%d", i%(n/10+1)), fmt.Sprintf("dst%d", i%97)
		rules = append(rules, policy.Rule{Source: src, Destination: dst, Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: uint16(1 + i%60000), End: uint16(1 + i%60000)}})
		eps = append(eps, Endpoint{IP: netip.AddrFrom4([4]byte{10, byte(200 + i>>16), byte(i >> 8), byte(i)}), App: src})
	}
	return rules, eps
}

// benchEngine returns an engine with n rules between n apps (plus the test
// rules), the test endpoints and 100k tracked flows.
func benchEngine(b *testing.B, n int) *Engine {
	rules, eps := benchRules(n)
	e := NewEngine(Config{})
	e.SetTable(Compile(TableConfig{Rules: rules, Endpoints: eps, LocalSubnet: localSubnet}))
	if e.Inbound(syn(ap(ipA, 40001), ap(ipB, 8080))) != Accept {
		b.Fatal("setup flow denied")
	}
	for i := range 99_999 {
		if e.Outbound(syn(ap(ipB, uint16(i)), ap(netip.AddrFrom4([4]byte{10, 255, 2, byte(100 + i>>16)}), 443))) != Accept {
			b.Fatal("setup flow denied")
		}
	}
	if e.Flows() != 100_000 {
		b.Fatalf("%d flows tracked, want 100000", e.Flows())
	}
	return e
}

// BenchmarkVerdict: one packet of an established flow (Inbound, and its
// reply Outbound) and the first packet of a new allowed flow, with N rules
// and 100k flows tracked.
func BenchmarkVerdict(b *testing.B) {
	for _, n := range []int{10, 1000, 10000, 100000} {
		e := benchEngine(b, n)
		// The established flow was opened before the 100k (benchEngine),
		// as a long-lived flow is; a young one was opened just now.
		// The loops call Inbound/Outbound directly (inboundLoop), not
		// through a helper taking a func value: the indirect call would add
		// ~1.5 ns to every figure.
		a, d := ap(ipA, 40001), ap(ipB, 8080)
		pkt := ack(a, d)
		b.Run(fmt.Sprintf("established/rules=%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(pkt)))
			inboundLoop(b, e, pkt)
		})
		b.Run(fmt.Sprintf("established-young/rules=%d", n), func(b *testing.B) {
			a := ap(ipA, 40000)
			e.Inbound(syn(a, d))
			inboundLoop(b, e, ack(a, d))
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
		b.Run(fmt.Sprintf("established-v6/rules=%d", n), func(b *testing.B) {
			a6, d6 := ap(ipA6, 40000), ap(ipB6, 8080)
			e.Inbound(syn(a6, d6))
			inboundLoop(b, e, ack(a6, d6))
		})
		b.Run(fmt.Sprintf("new/rules=%d", n), func(b *testing.B) {
			// One packet buffer, its source port rewritten for every
			// packet: on the data path a packet is judged right after it
			// was read from the TUN or decrypted, so it is in cache.
			// The ports go in blocks; a block's flows are forgotten,
			// outside the timer, lag blocks later, so that the table
			// holds 100,000 + (lag-1)*block to 100,000 + lag*block flows
			// throughout (112k-116k: the same table sizes as 100k), and
			// a block's flows go to slots that the 12 blocks since its
			// ports were last used have pushed out of the caches.
			const block, lag = 1 << 12, 4
			pkt := syn(ap(ipA, 0), d)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if i%block == 0 && i >= lag*block {
					b.StopTimer()
					forgetPorts(e, pkt, i-lag*block, block)
					b.StartTimer()
				}
				// One 16-bit store, as the parser's 16-bit load of the
				// port reads it: two byte stores would make that load wait
				// for them to reach the cache (no store forwarding from
				// two stores to one load), ~5 ns no packet of the data
				// path pays; its bytes were written by the TUN read or
				// the decryption long before.
				binary.BigEndian.PutUint16(pkt[20:], uint16(i))
				if e.Inbound(pkt) != Accept {
					b.Fatal("denied")
				}
				i++
			}
			b.StopTimer()
			if from := max(0, (i-1)/block*block-(lag-1)*block); i > 0 {
				forgetPorts(e, pkt, from, i-from)
			}
			if n := e.Flows(); n > 100_000 {
				b.Fatalf("%d flows tracked after forgetting the new ones, want at most 100000", n)
			}
		})
	}
}

// inboundLoop judges pkt, a packet of an established flow, b.N times.
func inboundLoop(b *testing.B, e *Engine, pkt []byte) {
	b.ReportAllocs()
	for b.Loop() {
		if e.Inbound(pkt) != Accept {
			b.Fatal("denied")
		}
	}
}

// forgetPorts forgets the flows of pkt with the n source ports from from
// on (modulo 65536).
func forgetPorts(e *Engine, pkt []byte, from, n int) {
	for p := from; p < from+n; p++ {
		binary.BigEndian.PutUint16(pkt[20:], uint16(p))
		forget(e, pkt)
	}
}

// BenchmarkVerdictParallel runs established flows on every core.
func BenchmarkVerdictParallel(b *testing.B) {
	e := benchEngine(b, 10000)
	var port atomic.Uint32
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		a, d := ap(ipA, uint16(50000+port.Add(1))), ap(ipB, 8080)
		e.Inbound(syn(a, d))
		pkt := ack(a, d)
		for pb.Next() {
			if e.Inbound(pkt) != Accept {
				b.Error("denied")
				return
			}
		}
	})
}

// BenchmarkVerdictRun judges batches of 64 packets of one established
// flow as a wrapper does, packet by packet (each) and as a run (run), with
// 10k rules and 100k flows tracked; ns/op is per packet.
func BenchmarkVerdictRun(b *testing.B) {
	e := benchEngine(b, 10000)
	pkt := ack(ap(ipA, 40001), ap(ipB, 8080))
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = bytes.Clone(pkt)
	}
	b.Run("each", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if e.Inbound(batch[i%64]) != Accept {
				b.Fatal("denied")
			}
		}
	})
	b.Run("run", func(b *testing.B) {
		b.ReportAllocs()
		var r Run
		for i := 0; b.Loop(); i++ {
			if e.InboundRun(batch[i%64], &r) != Accept {
				b.Fatal("denied")
			}
			if i%64 == 63 {
				e.End(&r)
			}
		}
		e.End(&r)
	})
}

// BenchmarkVerdictBothWays runs the two directions of one established
// flow on two goroutines at once, as a cell does: its data packets from
// wireguard-go's receiver (Inbound), its replies from the TUN reader
// (Outbound), mostly on different cores.
func BenchmarkVerdictBothWays(b *testing.B) {
	e := benchEngine(b, 10000)
	a, d := ap(ipA, 40001), ap(ipB, 8080)
	var role atomic.Uint32
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		in := role.Add(1)%2 == 1
		pkt := ack(a, d)
		if !in {
			pkt = ack(d, a)
		}
		for pb.Next() {
			var v Verdict
			if in {
				v = e.Inbound(pkt)
			} else {
				v = e.Outbound(pkt)
			}
			if v != Accept {
				b.Error("denied")
				return
			}
		}
	})
}

// BenchmarkCompile compiles N rules among ~65k apps and 65k endpoints and
// reports the bytes allocated by one compilation (MB/compile).
func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{100000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			rules := make([]policy.Rule, n)
			for i := range rules {
				rules[i] = policy.Rule{Source: fmt.Sprintf("app%d", i%65000), Destination: fmt.Sprintf("app%d", (i*7+1)%65000), Protocol: [...]policy.Protocol{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoICMP, policy.ProtoAll}[i%4], Ports: policy.PortRange{Start: uint16(1 + i%65521), End: uint16(min(65535, 1+i%65521+i%3))}}
				if rules[i].Protocol == policy.ProtoICMP {
					rules[i].Ports = policy.PortRange{}
				}
			}
			eps := make([]Endpoint, 65000)
			for i := range eps {
				eps[i] = Endpoint{IP: netip.AddrFrom4([4]byte{10, 255, byte(i >> 8), byte(i)}), App: fmt.Sprintf("app%d", i), Local: i%2 == 0}
			}
			b.ReportAllocs()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			var tab *Table
			for b.Loop() {
				tab = Compile(TableConfig{Rules: rules, Endpoints: eps, LocalSubnet: localSubnet})
			}
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N)/1e6, "MB/compile")
			distinct := slices.Clone(rules)
			policy.SortRules(distinct)
			if want := len(slices.Compact(distinct)); tab.Rules() != want {
				b.Fatalf("%d rules compiled, want %d", tab.Rules(), want)
			}
		})
	}
}

// forget removes the conntrack entry of pkt's flow.
func forget(e *Engine, pkt []byte) {
	var p packet
	parse(pkt, &p)
	var k ctKey
	e.ct.setKey(&k, &p.src, &p.dst, p.sport, p.dport, p.proto, p.v6)
	sh := e.ct.shard(&k)
	sh.lock()
	defer sh.unlock()
	if base, _, ok := e.ct.lookupLocked(sh, &k, e.clk.now()); ok {
		e.ct.removeLocked(sh, &k, base)
	}
}

// BenchmarkDenied: a new flow no rule allows (flow log off), the path a
// scan or a misconfigured client takes: the verdict, the reason counter
// and the app-pair count (denials.go).
func BenchmarkDenied(b *testing.B) {
	e := benchEngine(b, 1000)
	pkt := syn(ap(ipA, 40000), ap(ipB, 9999))
	b.ReportAllocs()
	for b.Loop() {
		if e.Inbound(pkt) != DropNoPolicy {
			b.Fatal("not denied")
		}
	}
}

// BenchmarkRandomRead is the host's latency of one random read (a chain of
// dependent loads, one 64-byte line each) within 1, 4 and 8 MiB: the
// conntrack of BenchmarkVerdict/new holds its 112k-116k flows in 4 MiB,
// and a new flow's bucket is such a read. Run with the verdict benchmarks,
// it says how much of `new` the host's caches decided at the time (a
// neighbour's load moves the 4 MiB figure by 2-3x).
func BenchmarkRandomRead(b *testing.B) {
	for _, mib := range []int{1, 4, 8} {
		lines := mib << 20 / 64
		next := make([]uint64, lines*8) // word 0 of each line: the next line's word index
		perm := rand.New(rand.NewPCG(1, 2)).Perm(lines)
		for i, l := range perm {
			next[l*8] = uint64(perm[(i+1)%lines] * 8)
		}
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			i := uint64(0)
			for b.Loop() {
				i = next[i]
			}
			if i >= uint64(len(next)) {
				b.Fatal("chain left the buffer")
			}
		})
	}
}
