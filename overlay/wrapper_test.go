package overlay

import (
	"bytes"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine"
	"github.com/weft-net/weft/policy/engine/pkttest"
)

// fakeTUN is an in-memory tun.Device: Read hands out queued packets, Write
// records what it was given.
type fakeTUN struct {
	toRead  [][]byte
	written [][]byte // copies of every packet written, in order
	batches int      // number of Write calls
}

func (f *fakeTUN) File() *os.File { return nil }
func (f *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	for n < len(bufs) && len(f.toRead) > 0 {
		sizes[n] = copy(bufs[n][offset:], f.toRead[0])
		f.toRead = f.toRead[1:]
		n++
	}
	return n, nil
}
func (f *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	f.batches++
	for _, b := range bufs {
		f.written = append(f.written, bytes.Clone(b[offset:]))
	}
	return len(bufs), nil
}
func (f *fakeTUN) MTU() (int, error)        { return 1420, nil }
func (f *fakeTUN) Name() (string, error)    { return "fake0", nil }
func (f *fakeTUN) Events() <-chan tun.Event { return nil }
func (f *fakeTUN) Close() error             { return nil }
func (f *fakeTUN) BatchSize() int           { return 128 }

// fakeFilter judges a packet by its first byte.
type fakeFilter map[byte]engine.Verdict

func (f fakeFilter) Outbound(p []byte) engine.Verdict { return f[p[0]] }
func (f fakeFilter) Inbound(p []byte) engine.Verdict  { return f[p[0]] }
func (f fakeFilter) Reject(p []byte, out []byte) int {
	n := copy(out, "reject:")
	out[n] = p[0]
	return n + 1
}

const (
	pAccept  = 'a'
	pLocal   = 'l'
	pDeny    = 'd'
	pSpoofed = 's'
)

var filter = fakeFilter{
	pAccept:  engine.Accept,
	pLocal:   engine.AcceptLocal,
	pDeny:    engine.DropNoPolicy,
	pSpoofed: engine.DropSpoofed,
}

const off = 16

func bufsOf(pkts ...string) [][]byte {
	bufs := make([][]byte, len(pkts))
	for i, p := range pkts {
		b := make([]byte, off+len(p), 2048)
		copy(b[off:], p)
		bufs[i] = b
	}
	return bufs
}

func TestWrapperWriteDropsAndRejects(t *testing.T) {
	inner := &fakeTUN{}
	w := NewWrapper(inner, filter)
	bufs := bufsOf("a1", "d2", "a3", "s4")
	heads := make([]*byte, len(bufs))
	for i := range bufs {
		heads[i] = &bufs[i][0]
	}
	n, err := w.Write(bufs, off)
	if err != nil || n != 4 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	got := make([]string, len(inner.written))
	for i, p := range inner.written {
		got[i] = string(p)
	}
	want := []string{"reject:d", "a1", "a3"}
	if len(got) != len(want) {
		t.Fatalf("inner got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("inner got %q, want %q", got, want)
		}
	}
	for i := range bufs {
		if &bufs[i][0] != heads[i] {
			t.Fatalf("Write moved the slice header of bufs[%d]", i)
		}
	}
	if w.Stats().Rejects.Load() != 1 || w.Stats().DroppedWrite.Load() != 2 {
		t.Fatalf("stats: rejects %d dropped %d", w.Stats().Rejects.Load(), w.Stats().DroppedWrite.Load())
	}
}

func TestWrapperReadHairpinsAndDrops(t *testing.T) {
	inner := &fakeTUN{toRead: [][]byte{[]byte("a1"), []byte("l2"), []byte("s3"), []byte("d4"), []byte("a5")}}
	w := NewWrapper(inner, filter)
	bufs := bufsOf("", "", "", "", "", "")
	for i := range bufs {
		bufs[i] = bufs[i][:cap(bufs[i])]
	}
	sizes := make([]int, len(bufs))
	n, err := w.Read(bufs, sizes, off)
	if err != nil || n != 5 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	wantSizes := []int{2, 0, 0, 0, 2}
	for i, s := range wantSizes {
		if sizes[i] != s {
			t.Fatalf("sizes = %v, want %v", sizes[:n], wantSizes)
		}
	}
	// The hair-pinned packet and the reject went back into the TUN.
	var got []string
	for _, p := range inner.written {
		got = append(got, string(p))
	}
	if len(got) != 2 || got[0] != "reject:d" || got[1] != "l2" {
		t.Fatalf("written back to TUN: %q", got)
	}
	if w.Stats().Hairpinned.Load() != 1 || w.Stats().PassedToPeers.Load() != 2 {
		t.Fatalf("stats: hairpinned %d passed %d", w.Stats().Hairpinned.Load(), w.Stats().PassedToPeers.Load())
	}
}

func TestWrapperWriteAllowedNoAllocs(t *testing.T) {
	inner := &fakeTUN{}
	w := NewWrapper(discardTUN{inner}, filter)
	bufs := bufsOf("a1", "a2", "a3")
	allocs := testing.AllocsPerRun(100, func() {
		w.Write(bufs, off)
	})
	if allocs != 0 {
		t.Fatalf("Write of allowed packets allocates %v times", allocs)
	}
	mixed := bufsOf("a1", "d2", "a3")
	w.Write(mixed, off) // warm the pool
	allocs = testing.AllocsPerRun(100, func() {
		w.Write(mixed, off)
	})
	if allocs != 0 {
		t.Fatalf("Write with a drop allocates %v times", allocs)
	}
}

// discardTUN is a fakeTUN whose Write records nothing.
type discardTUN struct{ *fakeTUN }

func (discardTUN) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }

// TestWrapperSetFilter: a filter set while the wrapper runs judges every
// batch from then on, in both directions, rejects included.
func TestWrapperSetFilter(t *testing.T) {
	inner := &fakeTUN{}
	w := NewWrapper(inner, filter)
	open := fakeFilter{pDeny: engine.Accept}
	for i, c := range []struct {
		f         Filter
		delivered int
	}{{filter, 0}, {open, 1}, {filter, 0}} {
		w.SetFilter(c.f)
		inner.written = nil
		if _, err := w.Write(bufsOf("d1"), off); err != nil {
			t.Fatal(err)
		}
		want := []string{"reject:d"}
		if c.delivered == 1 {
			want = []string{"d1"}
		}
		if len(inner.written) != 1 || string(inner.written[0]) != want[0] {
			t.Fatalf("step %d: Write delivered %q, want %q", i, inner.written, want)
		}
		inner.toRead = [][]byte{[]byte("d2")}
		bufs, sizes := bufsOf(""), []int{0}
		bufs[0] = bufs[0][:cap(bufs[0])]
		if n, err := w.Read(bufs, sizes, off); n != 1 || err != nil {
			t.Fatalf("step %d: Read = %d, %v", i, n, err)
		}
		if got := sizes[0] != 0; got != (c.delivered == 1) {
			t.Fatalf("step %d: Read passed the packet: %v, want %v", i, got, c.delivered == 1)
		}
	}
}

// TestWrapperStatsLayout keeps Read's counters and Write's at least a
// cache line apart, and Write's a line from whatever follows.
func TestWrapperStatsLayout(t *testing.T) {
	var s WrapperStats
	readEnd := unsafe.Offsetof(s.PassedToPeers) + 8
	for _, off := range []uintptr{unsafe.Offsetof(s.Hairpinned), unsafe.Offsetof(s.DroppedRead), unsafe.Offsetof(s.DroppedNoSession)} {
		readEnd = max(readEnd, off+8)
	}
	writeStart := min(unsafe.Offsetof(s.DroppedWrite), unsafe.Offsetof(s.Delivered), unsafe.Offsetof(s.Rejects), unsafe.Offsetof(s.WriteErrors))
	writeEnd := max(unsafe.Offsetof(s.DroppedWrite), unsafe.Offsetof(s.Delivered), unsafe.Offsetof(s.Rejects), unsafe.Offsetof(s.WriteErrors)) + 8
	if writeStart < readEnd+64 || unsafe.Sizeof(s) < writeEnd+64 {
		t.Fatalf("Read's counters end at %d, Write's span %d-%d of %d bytes: want 64 bytes between them and after", readEnd, writeStart, writeEnd, unsafe.Sizeof(s))
	}
}

// loopTUN is a tun.Device whose Read returns its whole batch of accepted
// packets at once and whose Write discards.
type loopTUN struct{ discardTUN }

func (loopTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for i := range bufs {
		bufs[i][offset] = pAccept
		sizes[i] = 1
	}
	return len(bufs), nil
}

// BenchmarkWrapperReadWrite runs Read (the TUN reader) and Write
// (wireguard-go's receiver) on two goroutines at once, batches of 64
// accepted packets, and reports ns per packet.
func BenchmarkWrapperReadWrite(b *testing.B) {
	w := NewWrapper(loopTUN{}, filter)
	var role atomic.Uint32
	b.RunParallel(func(pb *testing.PB) {
		read := role.Add(1)%2 == 1
		bufs, sizes := make([][]byte, 64), make([]int, 64)
		for i := range bufs {
			bufs[i] = make([]byte, off+64)
			bufs[i][off] = pAccept
		}
		for pb.Next() {
			if read {
				w.Read(bufs, sizes, off)
			} else {
				w.Write(bufs, off)
			}
		}
	})
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/64, "ns/packet")
}

// TestWrapperEngineRuns: with the policy engine as its filter, the wrapper
// judges each batch as a run (engine.Run): a denied packet inside a run of
// an allowed flow is still dropped and answered, and every packet is
// counted.
func TestWrapperEngineRuns(t *testing.T) {
	a, b := netip.MustParseAddr("10.255.2.10"), netip.MustParseAddr("10.255.1.20")
	d := netip.MustParseAddr("10.255.2.40")
	e := engine.NewEngine(engine.DefaultConfig())
	e.SetTable(engine.Compile(engine.TableConfig{
		Rules:       []policy.Rule{{Source: "appA", Destination: "appB", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 8080, End: 8080}}},
		Endpoints:   []engine.Endpoint{{IP: a, App: "appA"}, {IP: b, App: "appB", Local: true}, {IP: d, App: "appD"}},
		LocalSubnet: netip.MustParsePrefix("10.255.1.0/24"),
	}))
	data := pkttest.TCP(netip.AddrPortFrom(a, 40000), netip.AddrPortFrom(b, 8080), pkttest.ACK, 1, 1, []byte("data"))
	denied := pkttest.TCP(netip.AddrPortFrom(d, 40000), netip.AddrPortFrom(b, 8080), pkttest.ACK, 1, 1, []byte("data"))
	var pkts [][]byte
	for i := range 6 {
		p := data
		if i == 3 {
			p = denied
		}
		b := make([]byte, off+len(p))
		copy(b[off:], p)
		pkts = append(pkts, b)
	}
	inner := &fakeTUN{}
	w := NewWrapper(inner, e)
	if _, err := w.Write(pkts, off); err != nil {
		t.Fatal(err)
	}
	if len(inner.written) != 6 || inner.written[0][0]>>4 != 4 { // the reject, then 5 packets
		t.Fatalf("inner got %d packets, want the reject and 5", len(inner.written))
	}
	c := e.Counters()
	if c.Verdicts[engine.Accept] != 5 || c.Verdicts[engine.DropNoPolicy] != 1 {
		t.Fatalf("counters: %d accepted, %d no_policy; want 5 and 1", c.Verdicts[engine.Accept], c.Verdicts[engine.DropNoPolicy])
	}
}
