package overlay

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"
)

// DefaultMessageBuffers is the number of wireguard-go message buffers
// (64 KiB each) an Overlay allows and keeps: 768 = 48 MiB.
//
// wireguard-go's readers hold 3 batches of 128 buffers all the time (TUN
// reader, IPv4 and IPv6 UDP receivers), so this leaves 384 buffers (that
// many packets, one per buffer) in flight between the readers and the
// writers — far more than the bandwidth-delay product of a cell-to-cell
// path, and few enough that a bulk TCP stream cannot fill wireguard-go's
// queues (1024 batches) with hundreds of MB of buffers.
//
// A peer without a session holds up to 128 staged packets (wireguard-go's
// QueueStagedSize) until its handshake completes or gives up (90 s) or the
// peer is removed: three such peers would hold the 384 spare buffers and
// stop the TUN reader for all peers. The Wrapper's stageGate (gate.go)
// keeps them to 128 buffers in all.
const DefaultMessageBuffers = 768

// minMessageBuffers keeps a bound from starving wireguard-go's readers,
// which hold 3×128 buffers and block in Get when the bound is reached.
const minMessageBuffers = 512

// messageBuffersEnv overrides Config.MessageBuffers (benchmarks).
const messageBuffersEnv = "WEFT_WG_BUFFERS"

// msgPool holds the message buffers of one wireguard-go device, handed to
// it as device.Options.MessageBuffers (a patch of weft's copy,
// WEFT-PATCHES.md): a fixed set of max buffers, Get blocking while all are
// out.
//
// The buffers live in one anonymous mapping outside the Go heap. On Linux
// wireguard-go keeps its 64 KiB buffers in a sync.Pool with no bound. Under
// a bulk TCP stream that costs twice: every packet in flight holds a whole
// buffer, and wireguard-go's queues hold up to 1024 batches, so the heap
// grows to 300+ MB; and every garbage collection empties the sync.Pool, so
// the next packets come from fresh allocations that the runtime zeroes
// (10+% of the receiving agent) and that bring the next collection sooner.
// A bound on the heap (an earlier msgPool preallocated 768 heap buffers
// and resurrected them with finalizers) fixed both, but left 48 MiB in the
// heap whose pages the runtime touched when it zeroed reused spans: most
// of an idle agent's RSS. Outside the heap a buffer is never zeroed,
// scanned or freed, and a page becomes resident only when a packet is
// first written to it. Gets are last in, first out, so the buffers in use
// stay the same few; the run-to-completion readers keep their 3×128 for
// good and touch only what their packets fill. Close gives the pages back
// (MADV_DONTNEED) but keeps the mapping: a late access reads zeros instead
// of faulting.
type msgPool struct {
	mu    sync.Mutex
	cond  sync.Cond
	free  []*msgBuf
	arena []byte
	max   int
}

type msgBuf = [device.MaxMessageSize]byte

// msgStride is a buffer's share of the mapping, whole pages.
const msgStride = (device.MaxMessageSize + 4095) &^ 4095

var _ device.MessageBuffers = (*msgPool)(nil)

// newMsgPool maps n (at least minMessageBuffers) buffers.
func newMsgPool(n int) (*msgPool, error) {
	n = maxInt(n, minMessageBuffers)
	arena, err := unix.Mmap(-1, 0, n*msgStride, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("map %d message buffers: %w", n, err)
	}
	p := &msgPool{arena: arena, max: n, free: make([]*msgBuf, n)}
	p.cond.L = &p.mu
	for i := range n {
		// Highest first: Get pops from the end, the start of the arena.
		p.free[n-1-i] = (*msgBuf)(unsafe.Pointer(&arena[i*msgStride]))
	}
	return p, nil
}

// Get takes a buffer, waiting while all max are out.
func (p *msgPool) Get() *msgBuf {
	p.mu.Lock()
	for len(p.free) == 0 {
		p.cond.Wait()
	}
	b := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	p.mu.Unlock()
	return b
}

// Put gives a buffer back.
func (p *msgPool) Put(b *msgBuf) {
	p.mu.Lock()
	p.free = append(p.free, b)
	p.mu.Unlock()
	p.cond.Signal()
}

// out is the number of buffers taken and not given back.
func (p *msgPool) out() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.max - len(p.free)
}

// close gives the buffers' pages back to the kernel once the device is
// closed; the mapping stays (see msgPool).
func (p *msgPool) close() {
	if p != nil {
		unix.Madvise(p.arena, unix.MADV_DONTNEED)
	}
}

// messageBuffers is the bound on the message buffers of a device with
// queues TUN queues (and as many sockets per family): WEFT_WG_BUFFERS if
// set, else cfg.MessageBuffers, 0 meaning DefaultMessageBuffers plus 3×128
// for each queue after the first (its TUN reader and its two receivers
// hold a batch each, for good). It is at least the readers' batches plus
// 128 (newMsgPool).
func messageBuffers(cfg Config, queues int) int {
	n := cfg.MessageBuffers
	if n == 0 {
		n = DefaultMessageBuffers + readerBuffers*(max(queues, 1)-1)
	}
	if s := os.Getenv(messageBuffersEnv); s != "" {
		if v, err := strconv.Atoi(s); err == nil {
			n = v
		}
	}
	if n = maxInt(n, 0); n > 0 {
		n = maxInt(n, readerBuffers*max(queues, 1)+128)
	}
	return n
}

// readerBuffers is what one queue's readers hold: a batch of 128 for the
// TUN reader and for each family's UDP receiver.
const readerBuffers = 3 * 128

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}
