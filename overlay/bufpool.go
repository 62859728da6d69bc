package overlay

import (
	"errors"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

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

// msgPool bounds and recycles the message buffers of one wireguard-go
// device.
//
// On Linux wireguard-go keeps its 64 KiB message buffers in a sync.Pool with
// no bound (device.PreallocatedBuffersPerPool = 0). Under a bulk TCP stream
// that costs twice: every packet in flight holds a whole buffer, and
// wireguard-go's queues hold up to 1024 batches, so the heap grows to
// 300+ MB; and every garbage collection empties the sync.Pool, so the next
// packets come from fresh allocations that the runtime zeroes (10+% of the
// receiving agent) and that bring the next collection sooner — with a Go
// memory limit near the live heap, a collection loop that halved
// throughput (docs/performance.md).
//
// msgPool therefore (1) sets the bound of the device's buffer pool (the
// device.WaitPool field that PreallocatedBuffersPerPool sets on Android and
// iOS): Get blocks while max buffers are out, which pushes back on the
// readers, and from them on the TUN queue and the UDP socket; and (2)
// allocates all max buffers up front, each with a finalizer, into the
// pool's sync.Pool. When a collection drops one from the sync.Pool, the
// finalizer resurrects it: re-arms itself and puts the buffer back. So the
// buffers are never freed, never zeroed again, and the pool never
// allocates in steady state. A finalizer only runs for an unreachable
// buffer, so a buffer wireguard-go holds is never put back twice; the
// WaitPool's count (Gets minus wireguard-go's Puts) is not touched.
//
// The WaitPool's fields are unexported: they are reached with reflect and
// unsafe, checked against the expected types (TestMsgPoolFields fails if a
// wireguard-go update changes them; New then logs and runs unbounded).
type msgPool struct {
	pool   *sync.Pool // the WaitPool's sync.Pool
	max    int
	closed atomic.Bool
	reused atomic.Uint64 // buffers put back by a finalizer
}

type msgBuf = [device.MaxMessageSize]byte

// waitPoolFields finds the sync.Pool and the bound of dev's message-buffer
// WaitPool.
func waitPoolFields(dev *device.Device) (*sync.Pool, *uint32, error) {
	d := reflect.ValueOf(dev).Elem()
	pools := d.FieldByName("pool")
	if pools.Kind() != reflect.Struct {
		return nil, nil, errors.New("device.Device has no pool struct")
	}
	mb := pools.FieldByName("messageBuffers")
	if mb.Type() != reflect.TypeFor[*device.WaitPool]() || mb.IsNil() {
		return nil, nil, errors.New("device.Device.pool.messageBuffers is not a *WaitPool")
	}
	wp := mb.Elem()
	sp, mx := wp.FieldByName("pool"), wp.FieldByName("max")
	if !sp.IsValid() || sp.Type() != reflect.TypeFor[sync.Pool]() {
		return nil, nil, errors.New("device.WaitPool has no sync.Pool field pool")
	}
	if !mx.IsValid() || mx.Kind() != reflect.Uint32 {
		return nil, nil, errors.New("device.WaitPool has no uint32 field max")
	}
	return (*sync.Pool)(unsafe.Pointer(sp.UnsafeAddr())), (*uint32)(unsafe.Pointer(mx.UnsafeAddr())), nil
}

// newMsgPool bounds dev's message buffers to n (at least
// minMessageBuffers) and fills the pool with n recycled buffers. It must run before wireguard-go takes its first
// buffer (Wrapper.holdReaders) — the bound counts Gets from that moment.
func newMsgPool(dev *device.Device, n int) (*msgPool, error) {
	if device.PreallocatedBuffersPerPool != 0 {
		return nil, errors.New("wireguard-go bounds its pools already")
	}
	sp, mx, err := waitPoolFields(dev)
	if err != nil {
		return nil, err
	}
	n = maxInt(n, minMessageBuffers)
	*mx = uint32(n)
	p := &msgPool{pool: sp, max: n}
	for range n {
		b := new(msgBuf)
		runtime.SetFinalizer(b, p.recycle)
		sp.Put(b)
	}
	return p, nil
}

// recycle is the finalizer of a buffer that became unreachable (dropped
// from the sync.Pool by a collection).
func (p *msgPool) recycle(b *msgBuf) {
	if p.closed.Load() {
		return // the device is gone: let the buffer be freed
	}
	runtime.SetFinalizer(b, p.recycle)
	p.reused.Add(1)
	p.pool.Put(b)
}

// close stops resurrecting buffers; later collections free them.
func (p *msgPool) close() {
	if p != nil {
		p.closed.Store(true)
	}
}

// messageBuffers is the bound to use: cfg's value, 0 meaning the default,
// overridden by WEFT_WG_BUFFERS; negative (or WEFT_WG_BUFFERS=0) means
// wireguard-go's own unbounded pool.
func messageBuffers(cfg Config) int {
	if s := os.Getenv(messageBuffersEnv); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			return maxInt(n, 0)
		}
	}
	if cfg.MessageBuffers == 0 {
		return DefaultMessageBuffers
	}
	return maxInt(cfg.MessageBuffers, 0)
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}
