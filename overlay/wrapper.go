package overlay

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/policy/engine"
)

// Filter decides the fate of one IP packet. *engine.Engine implements it.
//
// All methods are called concurrently: Outbound from the TUN reader
// goroutine, Inbound from wireguard-go's UDP receivers (per-peer receive
// goroutines on the queued data path) and from the TUN reader (hair-pinned
// packets). pkt is borrowed: valid only for the
// duration of the call.
type Filter interface {
	// Outbound judges a packet that a local container sent (read from the TUN).
	Outbound(pkt []byte) engine.Verdict
	// Inbound judges a packet that a peer cell sent (decrypted by WireGuard).
	Inbound(pkt []byte) engine.Verdict
	// Reject writes the answer to a denied packet (TCP RST or ICMP
	// unreachable) into out and returns its length, or 0 for none.
	Reject(pkt []byte, out []byte) int
}

var _ Filter = (*engine.Engine)(nil)

// rejectHeadroom is room in front of a synthesized reject packet for the
// virtio-net header the TUN device prepends on Write.
const rejectHeadroom = 16

// Wrapper is the tun.Device handed to wireguard-go. It sits between the
// kernel's TUN device and WireGuard and applies the policy to every packet:
//
//   - Read (kernel -> WireGuard): packets that local containers sent. The
//     source must be a registered local endpoint; the flow is noted so that
//     replies pass. A packet for another container on this cell is judged as
//     an inbound packet and written straight back to the TUN (hair-pin); it
//     never reaches WireGuard.
//   - Write (WireGuard -> kernel): decrypted packets from peer cells. Each is
//     judged; denied ones are dropped and answered with a reject written into
//     the TUN, from where the kernel routes it back out through weft0 to the
//     sender.
//
// Packets seen here are at most MTU-sized: the inner device splits TSO
// super-packets on Read and coalesces (GRO) on Write. The wrapper never moves
// the slice headers of bufs: Read drops a packet by setting its size to 0,
// Write passes a compacted copy of the slice headers to the inner device.
type Wrapper struct {
	tun.Device // the real TUN device
	filter     atomic.Pointer[filterRef]

	// first reads the first queue (Device) for Read, as the reader of
	// each more queue reads through its own (Queue).
	first *queueReader

	rejectMu  sync.Mutex // serialises use of rejectBuf
	rejectBuf []byte
	rejectVec [][]byte

	writePool sync.Pool // *[][]byte scratch for Write compaction

	// gate, if set, limits what peers without a session may hold
	// (gate.go). Set once, by Overlay.startDevice before the device
	// starts; atomic so that a later Store stays safe.
	gate atomic.Pointer[stageGate]

	// probe recognises path MTU probes between cell addresses (probe.go),
	// which pass without the filter. Set by Overlay.New before the
	// device starts; the zero value recognises none.
	probe probeFilter

	stats WrapperStats
}

// WrapperStats are packet counters of the wrapper itself; the verdict
// counters live in the filter. Read's counters and Write's are on separate
// cache lines: the TUN reader and wireguard-go's receivers run on
// different cores, and a line both write would move between them.
type WrapperStats struct {
	// Written by Read (the TUN reader).
	Hairpinned  atomic.Uint64 // packets written back to the TUN for a local container
	DroppedRead atomic.Uint64 // packets from local containers dropped
	// DroppedNoSession counts packets for a peer without a WireGuard
	// session that already holds its share of the buffers (gate.go).
	DroppedNoSession atomic.Uint64
	PassedToPeers    atomic.Uint64 // packets handed to WireGuard
	_                [96]byte

	// Written by Write (wireguard-go's receivers); rejects and write
	// errors by both, rarely.
	DroppedWrite atomic.Uint64 // packets from peers dropped
	Delivered    atomic.Uint64 // packets from peers written to the TUN
	Rejects      atomic.Uint64 // RST / ICMP unreachable packets written
	WriteErrors  atomic.Uint64 // errors from the inner device's Write
	_            [96]byte
}

var _ tun.Device = (*Wrapper)(nil)

// NewWrapper wraps dev with filter.
func NewWrapper(dev tun.Device, filter Filter) *Wrapper {
	w := &Wrapper{
		Device:    dev,
		rejectBuf: make([]byte, rejectHeadroom+1500+64),
		rejectVec: make([][]byte, 1),
	}
	w.writePool.New = func() any {
		s := make([][]byte, 0, dev.BatchSize())
		return &s
	}
	w.first = w.Queue(dev).(*queueReader)
	w.SetFilter(filter)
	return w
}

// filterRef holds the wrapper's filter for an atomic pointer.
type filterRef struct{ Filter }

// SetFilter makes f the filter of every batch read or written from now on
// (a batch in flight keeps the filter it started with).
func (w *Wrapper) SetFilter(f Filter) { w.filter.Store(&filterRef{f}) }

// Filter returns the wrapper's current filter.
func (w *Wrapper) Filter() Filter { return w.filter.Load().Filter }

// Stats returns the wrapper's counters.
func (w *Wrapper) Stats() *WrapperStats { return &w.stats }

// Read reads packets leaving local containers. Dropped or hair-pinned packets
// are reported with size 0, which wireguard-go skips.
func (w *Wrapper) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return w.first.Read(bufs, sizes, offset)
}

// Queue returns the Device through which the reader of another queue of
// the TUN (tun.NewQueue, device.Options.TUNQueues) reads: dev's packets
// judged as Read judges the first queue's, with this wrapper's filter,
// gate, probe and counters, hair-pins and rejects written to the first
// queue; Write judges as Wrapper.Write and writes into dev. Close is
// dev's.
func (w *Wrapper) Queue(dev tun.Device) tun.Device {
	return &queueReader{Device: dev, w: w, hairpin: make([][]byte, 0, dev.BatchSize())}
}

// queueReader is a reader's view of one TUN queue: the first
// (Wrapper.Read) or one more (Wrapper.Queue).
type queueReader struct {
	tun.Device
	w *Wrapper
	// Only the queue's one reader goroutine calls Read, so its scratch
	// needs no lock.
	hairpin [][]byte // borrowed from bufs for one Read call
}

// Read is Wrapper.Read from this queue.
func (q *queueReader) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	w := q.w
	n, err := q.Device.Read(bufs, sizes, offset)
	f := w.Filter()
	// The engine judges a batch as a run (engine.Run). It is called
	// through its concrete type, not the Filter interface, so that run
	// stays on the stack: through an interface, &run would escape and
	// every batch would allocate one.
	eng, _ := f.(*engine.Engine)
	gate := w.gate.Load()
	var run engine.Run
	hairpin := q.hairpin[:0]
	passed := 0
	for i := 0; i < n; i++ {
		if sizes[i] < 1 {
			continue
		}
		pkt := bufs[i][offset : offset+sizes[i]]
		var v engine.Verdict
		switch {
		case w.probe.outbound(pkt):
			v = engine.Accept
		case eng != nil:
			v = eng.OutboundRun(pkt, &run)
		default:
			v = f.Outbound(pkt)
		}
		switch {
		case v == engine.Accept:
			if gate == nil || gate.allow(pkt) {
				passed++
				continue
			}
			w.stats.DroppedNoSession.Add(1)
		case v == engine.AcceptLocal:
			hairpin = append(hairpin, bufs[i][:offset+sizes[i]])
		case v.Reject():
			w.stats.DroppedRead.Add(1)
			w.reject(f, pkt)
		default:
			w.stats.DroppedRead.Add(1)
		}
		sizes[i] = 0
	}
	if eng != nil {
		eng.End(&run)
	}
	if passed > 0 {
		w.stats.PassedToPeers.Add(uint64(passed))
	}
	if len(hairpin) > 0 {
		w.stats.Hairpinned.Add(uint64(len(hairpin)))
		if _, werr := w.Device.Write(hairpin, offset); werr != nil {
			w.stats.WriteErrors.Add(1)
		}
		clear(hairpin) // do not keep references to wireguard-go's buffers
	}
	q.hairpin = hairpin[:0]
	return n, err
}

// Write delivers decrypted packets from peers that the policy allows.
func (w *Wrapper) Write(bufs [][]byte, offset int) (int, error) {
	return w.write(w.Device, bufs, offset)
}

// Write is Wrapper.Write into this queue (the receivers of a device with
// TUN queues write into one each: device.Options.TUNQueues).
func (q *queueReader) Write(bufs [][]byte, offset int) (int, error) {
	return q.w.write(q.Device, bufs, offset)
}

// write is Write into the TUN queue dev.
func (w *Wrapper) write(dev tun.Device, bufs [][]byte, offset int) (int, error) {
	var keep *[][]byte
	f := w.Filter()
	eng, _ := f.(*engine.Engine) // a run, as in Read
	var run engine.Run
	for i, b := range bufs {
		pkt := b[offset:]
		var v engine.Verdict
		switch {
		case w.probe.inbound(pkt):
			v = engine.Accept
		case eng != nil:
			v = eng.InboundRun(pkt, &run)
		default:
			v = f.Inbound(pkt)
		}
		if v.Allowed() {
			if keep != nil {
				*keep = append(*keep, b)
			}
			continue
		}
		w.stats.DroppedWrite.Add(1)
		if v.Reject() {
			w.reject(f, pkt)
		}
		if keep == nil {
			// First drop in this batch: start a compacted copy holding
			// the packets allowed so far.
			keep = w.writePool.Get().(*[][]byte)
			*keep = append((*keep)[:0], bufs[:i]...)
		}
	}
	if eng != nil {
		eng.End(&run)
	}
	out := bufs
	if keep != nil {
		out = *keep
	}
	var err error
	if len(out) > 0 {
		w.stats.Delivered.Add(uint64(len(out)))
		if _, err = dev.Write(out, offset); err != nil {
			w.stats.WriteErrors.Add(1)
		}
	}
	if keep != nil {
		clear(*keep)
		*keep = (*keep)[:0]
		w.writePool.Put(keep)
	}
	if err != nil {
		return 0, err
	}
	return len(bufs), nil
}

// reject answers the packet pkt that f denied with a RST or ICMP
// unreachable, written into the TUN: the kernel delivers it to a local
// sender, or routes it back out through the TUN, and so through WireGuard,
// to a remote one.
func (w *Wrapper) reject(f Filter, pkt []byte) {
	w.rejectMu.Lock()
	defer w.rejectMu.Unlock()
	n := f.Reject(pkt, w.rejectBuf[rejectHeadroom:])
	if n == 0 {
		return
	}
	w.rejectVec[0] = w.rejectBuf[:rejectHeadroom+n]
	if _, err := w.Device.Write(w.rejectVec, rejectHeadroom); err != nil {
		w.stats.WriteErrors.Add(1)
		return
	}
	w.stats.Rejects.Add(1)
}

// OpenFilter is the Filter of an agent running with policy enforcement off
// (`weft agent --policy=off`): every packet passes, in both directions, with
// no source check, no rules and no connection tracking. Packets for the
// cell's own subnet are still hair-pinned (AcceptLocal) so that containers
// on one cell reach each other. It exists to measure what the policy costs.
type OpenFilter struct {
	LocalSubnet netip.Prefix
}

var _ Filter = OpenFilter{}

// Outbound accepts; packets for the local subnet are hair-pinned.
func (f OpenFilter) Outbound(pkt []byte) engine.Verdict {
	if len(pkt) >= 20 && pkt[0]>>4 == 4 {
		if dst := netip.AddrFrom4([4]byte(pkt[16:20])); f.LocalSubnet.Contains(dst) {
			return engine.AcceptLocal
		}
	}
	return engine.Accept
}

// Inbound accepts.
func (OpenFilter) Inbound([]byte) engine.Verdict { return engine.Accept }

// Reject never answers (nothing is denied).
func (OpenFilter) Reject([]byte, []byte) int { return 0 }
