package engine

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/policy/engine/pkttest"
)

// runFlow is one direction of a flow of the test cell.
type runFlow struct {
	d        dir
	src, dst netip.AddrPort
	udp      bool
}

var runFlows = []runFlow{
	{in, ap(ipA, 40000), ap(ipB, 8080), false},  // allowed
	{out, ap(ipB, 8080), ap(ipA, 40000), false}, // its replies
	{in, ap(ipA, 40001), ap(ipB, 53), true},     // allowed udp
	{out, ap(ipC, 40002), ap(ipB, 9000), false}, // hair-pinned
	{out, ap(ipB, 40003), ap(ipD, 8080), false}, // outbound, allowed
	{in, ap(ipD, 8080), ap(ipB, 40003), false},  // its replies
	{in, ap(ipD, 40004), ap(ipB, 8080), false},  // no rule
	{in, ap(ipA, 40005), ap(ipB, 1), false},     // no rule for the port
	{out, ap(ipA, 40006), ap(ipD, 8080), false}, // spoofed source
}

// runPacket returns a packet of f: mostly plain, sometimes with state
// flags, IP options, as a fragment, or with broken lengths.
func runPacket(rng *rand.Rand, f runFlow) []byte {
	var pkt []byte
	if f.udp {
		pkt = pkttest.UDP(f.src, f.dst, []byte("payload"))
	} else {
		flags := []uint8{pkttest.ACK, pkttest.ACK | pkttest.PSH, pkttest.SYN, pkttest.SYN | pkttest.ACK,
			pkttest.FIN | pkttest.ACK, pkttest.RST}[min(rng.IntN(12), 5)]
		pkt = pkttest.TCP(f.src, f.dst, flags, 1000, 2000, []byte("data"))
	}
	switch rng.IntN(40) {
	case 0: // a first fragment
		pkt[6] |= 0x20
	case 5: // a later fragment, whose bytes 20-23 are not ports
		pkt[7] = 3
	case 1: // total length beyond the buffer
		pkt[3]++
	case 2: // truncated transport header
		pkt = pkt[:26]
	case 3: // IP options: a 24-byte header
		opt := append(bytes.Clone(pkt[:20]), 1, 1, 1, 0)
		opt[0], opt[3] = 0x46, pkt[3]+4
		pkt = append(opt, pkt[20:]...)
	case 4: // UDP length beyond the packet, or a TCP data offset past it
		if f.udp {
			pkt[25] = 0xff
		} else {
			pkt[32] = 0xf0
		}
	}
	return pkt
}

// TestRunMatchesPackets: batches judged as runs (InboundRun, OutboundRun,
// End) give every packet the verdict Inbound and Outbound give it packet
// by packet, and the same counters, over random batches that are mostly
// one flow and switch flows, flags, malformed and fragmented packets,
// tables (rules removed and back) between and within batches, and time
// (closing flows expire: a FIN a run skipped would show).
func TestRunMatchesPackets(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	each := newTestEngine(t, Config{MaxFlows: 4096})
	runs := newTestEngine(t, Config{MaxFlows: 4096})
	// The same fragment cache slots in both: a first fragment that one
	// forgets for a collision, the other forgets too (with seeds of their
	// own, about 1 run in 60 failed on a later fragment).
	runs.frags.seed = each.frags.seed
	tables := []func() *Table{
		func() *Table { return testTable(testRules) },
		func() *Table { return testTable(without(testRules, 0)) }, // appA -> appB tcp 8080 removed
		func() *Table { return testTable(without(testRules, 1)) }, // appA -> appB udp 53 removed
	}
	setTable := func() {
		mk := tables[rng.IntN(len(tables))]
		each.SetTable(mk())
		runs.SetTable(mk())
	}
	hits := 0
	for batch := range 3000 {
		if rng.IntN(8) == 0 {
			setTable()
		}
		if rng.IntN(50) == 0 { // closing TCP flows expire, open ones stay
			each.clk.advance(DefaultConfig().TCPClosing + time.Second)
			runs.clk.advance(DefaultConfig().TCPClosing + time.Second)
		}
		d := dir(rng.IntN(2))
		var flows []runFlow
		for _, f := range runFlows {
			if f.d == d {
				flows = append(flows, f)
			}
		}
		f := flows[rng.IntN(len(flows))]
		var r Run
		for i := range 1 + rng.IntN(64) {
			if rng.IntN(10) == 0 {
				f = flows[rng.IntN(len(flows))]
			}
			if rng.IntN(100) == 0 {
				setTable()
			}
			pkt := runPacket(rng, f)
			var want, got Verdict
			n := r.n
			if d == in {
				want, got = each.Inbound(pkt), runs.InboundRun(pkt, &r)
			} else {
				want, got = each.Outbound(pkt), runs.OutboundRun(pkt, &r)
			}
			if r.n > n {
				hits++
			}
			if got != want {
				t.Fatalf("batch %d packet %d (%v %v -> %v): run %v, one by one %v\n% x", batch, i, d, f.src, f.dst, got, want, pkt)
			}
		}
		runs.End(&r)
		if g, w := runs.Counters().Verdicts, each.Counters().Verdicts; g != w {
			t.Fatalf("after batch %d: counters %v with runs, %v one by one", batch, g, w)
		}
	}
	if hits < 3000 {
		t.Fatalf("only %d packets were accepted from a run's memory: the test does not exercise it", hits)
	}
	t.Logf("%d packets accepted from memory", hits)
}

// TestRunNoAllocs: a run allocates nothing.
func TestRunNoAllocs(t *testing.T) {
	e := newTestEngine(t, Config{MaxFlows: 1024})
	pkt := ack(ap(ipA, 40000), ap(ipB, 8080))
	var r Run
	if n := testing.AllocsPerRun(1000, func() {
		e.InboundRun(pkt, &r)
		e.InboundRun(pkt, &r)
		e.End(&r)
	}); n != 0 {
		t.Fatalf("%v allocs per run", n)
	}
}
