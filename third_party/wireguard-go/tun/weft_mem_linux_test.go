package tun

// Tests of weft's GRO table sizing (WEFT-PATCHES.md, "Small GRO tables").

import (
	"runtime"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestWeftGROTablesSmall: a TUN device's two GRO tables take kilobytes, not
// the 2 MiB of upstream's 128×128 preallocated items.
func TestWeftGROTablesSmall(t *testing.T) {
	const n = 8
	keep := make([]any, 0, 2*n)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		keep = append(keep, newTCPGROTable(), newUDPGROTable())
	}
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(keep)
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 128<<10 {
		t.Errorf("a TCP and a UDP GRO table allocate %d KiB, want at most 128", per>>10)
	}
}

// TestWeftGROManyItemsPerFlow: a flow with more packets that cannot be
// coalesced than a pooled item slice starts with grows its slice, and the
// tables coalesce the next batch as before.
func TestWeftGROManyItemsPerFlow(t *testing.T) {
	tcpT, udpT := newTCPGROTable(), newUDPGROTable()
	// 3×groItemsCap segments of one flow, each 100 bytes, every other
	// sequence range missing: nothing coalesces, every one is an item.
	var pkts [][]byte
	for i := range 3 * groItemsCap {
		pkts = append(pkts, tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck, 100, uint32(1+200*i)))
	}
	toWrite := make([]int, 0, len(pkts))
	if err := handleGRO(pkts, offset, tcpT, udpT, true, &toWrite); err != nil {
		t.Fatal(err)
	}
	if len(toWrite) != len(pkts) {
		t.Fatalf("gaps: %d packets to write, want %d", len(toWrite), len(pkts))
	}
	tcpT.reset()
	udpT.reset()
	// Then 3 contiguous segments: one packet of 3×100 bytes of payload.
	pkts = [][]byte{
		tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck, 100, 1),
		tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck, 100, 101),
		tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck, 100, 201),
	}
	toWrite = toWrite[:0]
	if err := handleGRO(pkts, offset, tcpT, udpT, true, &toWrite); err != nil {
		t.Fatal(err)
	}
	if len(toWrite) != 1 || len(pkts[toWrite[0]])-offset != 40+300 {
		t.Fatalf("contiguous: toWrite %v, want one packet of 340 bytes", toWrite)
	}
}
