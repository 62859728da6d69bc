package overlay

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/policy/engine"
)

// udp4 builds an IPv4 UDP packet without options.
func udp4(src, dst string, sport, dport uint16, flagsFrag uint16) []byte {
	p := make([]byte, 28+8)
	p[0], p[9] = 0x45, 17
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[6:], flagsFrag)
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], dport)
	return p
}

// TestProbeFilter: only probes and answers between cell addresses on
// PMTUProbePort pass without the policy; container traffic, other ports,
// other addresses of a cell's subnet and fragments do not.
func TestProbeFilter(t *testing.T) {
	f := newProbeFilter(netip.MustParsePrefix("10.255.1.0/24"))
	const P = PMTUProbePort
	out := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"probe", udp4("10.255.1.1", "10.255.2.1", 40000, P, 0x4000), true},
		{"answer", udp4("10.255.1.1", "10.255.2.1", P, 40000, 0x4000), true},
		{"to a container", udp4("10.255.1.1", "10.255.2.7", 40000, P, 0), false},
		{"from a container", udp4("10.255.1.2", "10.255.2.1", 40000, P, 0), false},
		{"other port", udp4("10.255.1.1", "10.255.2.1", 40000, P+1, 0), false},
		{"to itself", udp4("10.255.1.1", "10.255.1.1", 40000, P, 0), false},
		{"fragment", udp4("10.255.1.1", "10.255.2.1", 40000, P, 0x2000), false},
		{"short", udp4("10.255.1.1", "10.255.2.1", 40000, P, 0)[:24], false},
	}
	for _, c := range out {
		if got := f.outbound(c.pkt); got != c.want {
			t.Errorf("outbound %s: %v, want %v", c.name, got, c.want)
		}
	}
	in := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"probe", udp4("10.255.2.1", "10.255.1.1", 40000, P, 0x4000), true},
		{"answer", udp4("10.255.2.1", "10.255.1.1", P, 40000, 0), true},
		{"from a container", udp4("10.255.2.7", "10.255.1.1", 40000, P, 0), false},
		{"to a container", udp4("10.255.2.1", "10.255.1.2", 40000, P, 0), false},
		{"other port", udp4("10.255.2.1", "10.255.1.1", 40000, 53, 0), false},
	}
	for _, c := range in {
		if got := f.inbound(c.pkt); got != c.want {
			t.Errorf("inbound %s: %v, want %v", c.name, got, c.want)
		}
	}
	var off probeFilter
	if off.outbound(out[0].pkt) || off.inbound(in[0].pkt) {
		t.Error("the zero probeFilter recognised a probe")
	}
}

// TestWrapperPassesProbes: with a policy that allows nothing, the wrapper
// hands path MTU probes to WireGuard (Read) and to the kernel (Write),
// and still drops the same datagram from a container.
func TestWrapperPassesProbes(t *testing.T) {
	local := netip.MustParsePrefix("10.255.1.0/24")
	eng := engine.NewEngine(engine.DefaultConfig())
	eng.SetTable(engine.Compile(engine.TableConfig{LocalSubnet: local}))
	dev := &fakeTUN{}
	w := NewWrapper(dev, eng)
	w.probe = newProbeFilter(local)

	probe := udp4("10.255.1.1", "10.255.2.1", 40000, PMTUProbePort, 0x4000)
	spoof := udp4("10.255.1.9", "10.255.2.1", 40000, PMTUProbePort, 0x4000)
	dev.toRead = [][]byte{probe, spoof}
	bufs := [][]byte{make([]byte, 2000), make([]byte, 2000)}
	sizes := make([]int, 2)
	if n, err := w.Read(bufs, sizes, 0); n != 2 || err != nil {
		t.Fatalf("Read: %d, %v", n, err)
	}
	if sizes[0] != len(probe) || sizes[1] != 0 {
		t.Errorf("Read sizes %v: want the probe passed (%d) and the container's datagram dropped (0)", sizes, len(probe))
	}

	answer := udp4("10.255.2.1", "10.255.1.1", PMTUProbePort, 40000, 0)
	fromCtr := udp4("10.255.2.9", "10.255.1.1", PMTUProbePort, 40000, 0)
	if _, err := w.Write([][]byte{answer, fromCtr}, 0); err != nil {
		t.Fatal(err)
	}
	if len(dev.written) != 1 || !bytes.Equal(dev.written[0], answer) {
		t.Errorf("Write delivered %d packets, want only the answer", len(dev.written))
	}
}
