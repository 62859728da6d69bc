package engine

import (
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"

	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine/pkttest"
)

// synFlood sends n SYNs from random appA hosts and ports to random ports
// of appB allowed by the rule appA -> appB tcp 8080-8090: nearly every one
// is a new flow.
func synFlood(e *Engine, rng *rand.Rand, n int, pkt []byte) {
	for range n {
		r := rng.Uint64()
		pkt[20], pkt[21] = byte(r), byte(r>>8)       // source port
		pkt[22], pkt[23] = 0x1f, byte(0x90+r>>16%11) // destination port 8080-8090
		pkt[15] = byte(r >> 24)                      // source host byte: 10.255.2.x
		e.Inbound(pkt)
	}
}

func floodEngine(maxFlows int) *Engine {
	eps := append([]Endpoint(nil), testEndpoints...)
	for i := range 256 {
		eps = append(eps, Endpoint{IP: netip.AddrFrom4([4]byte{10, 255, 2, byte(i)}), App: "appA"})
	}
	e := NewEngine(Config{MaxFlows: maxFlows})
	e.SetTable(Compile(TableConfig{Rules: append(testRules[:1:1], policy.Rule{Source: "appA", Destination: "appB", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 8080, End: 8090}}),
		Endpoints: eps, LocalSubnet: localSubnet}))
	return e
}

func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestSYNFloodBounded floods random-port SYNs through an allowed rule:
// the table stays at MaxFlows, and the heap does not grow once it is
// full, however long the flood lasts.
func TestSYNFloodBounded(t *testing.T) {
	const maxFlows = 50_000
	e := floodEngine(maxFlows)
	rng := rand.New(rand.NewPCG(1, 2))
	pkt := syn(ap(ipA, 1), ap(ipB, 8080))
	synFlood(e, rng, 2*maxFlows, pkt)
	full := heapInuse()
	synFlood(e, rng, 10*maxFlows, pkt)
	after := heapInuse()
	if n := e.Flows(); n > maxFlows || n < maxFlows*9/10 {
		t.Errorf("Flows = %d after the flood, MaxFlows %d", n, maxFlows)
	}
	if after > full+1<<20 {
		t.Errorf("heap grew from %d to %d bytes while the full table was flooded", full, after)
	}
	if c := e.Counters(); c.Evictions < 10*maxFlows || c.Verdicts[Accept] != 12*maxFlows {
		t.Errorf("evictions %d accepted %d", c.Evictions, c.Verdicts[Accept])
	}
	// A flow that keeps talking survives the flood.
	if v := e.Inbound(pkttest.TCP(ap(ipA, 1), ap(ipB, 8080), pkttest.ACK, 1, 1, nil)); !v.Allowed() {
		t.Errorf("allowed ack after the flood: %v", v)
	}
}

// BenchmarkSYNFlood floods random-port SYNs through an allowed rule into a
// conntrack of MaxFlows=2^20 (the default) that is already full, and
// reports the heap it holds: bytes per tracked flow and in total.
func BenchmarkSYNFlood(b *testing.B) {
	const maxFlows = 1 << 20
	before := heapInuse()
	e := floodEngine(maxFlows)
	rng := rand.New(rand.NewPCG(1, 2))
	pkt := syn(ap(ipA, 1), ap(ipB, 8080))
	synFlood(e, rng, 2*maxFlows, pkt)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		synFlood(e, rng, 1, pkt)
	}
	b.StopTimer()
	after := heapInuse()
	if n := e.Flows(); n > maxFlows {
		b.Fatalf("Flows = %d > MaxFlows", n)
	}
	b.ReportMetric(float64(after-before)/maxFlows, "heapB/flow")
	b.ReportMetric(float64(after-before)/1e6, "heapMB")
	runtime.KeepAlive(e)
}
