package overlay

import (
	"runtime"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// newHeldDevice makes a wireguard-go device on a channel TUN behind a
// Wrapper whose readers are held, as overlay.New does.
func newHeldDevice(t *testing.T) (*device.Device, *Wrapper) {
	t.Helper()
	w := NewWrapper(tuntest.NewChannelTUN().TUN(), OpenFilter{})
	w.holdReaders()
	dev := device.NewDevice(w, bindtest.NewChannelBinds()[0], device.NewLogger(device.LogLevelError, "test: "))
	return dev, w
}

// TestMsgPoolFields fails when a wireguard-go update renames or retypes the
// unexported pool fields newMsgPool sets.
func TestMsgPoolFields(t *testing.T) {
	dev, w := newHeldDevice(t)
	defer dev.Close()
	defer w.releaseReaders()
	if _, _, err := waitPoolFields(dev); err != nil {
		t.Fatal(err)
	}
}

// TestMsgPoolBoundsAndRecycles checks that the pool is bounded (Get blocks
// at the bound) and that its buffers come back after collections empty the
// sync.Pool.
func TestMsgPoolBoundsAndRecycles(t *testing.T) {
	dev, w := newHeldDevice(t)
	defer dev.Close()
	p, err := newMsgPool(dev, minMessageBuffers)
	w.releaseReaders()
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	// Collections empty the sync.Pool (primary, then victim cache); the
	// finalizers put the buffers back. Wait for that, bounded.
	deadline := time.Now().Add(20 * time.Second)
	for p.reused.Load() < 64 {
		if time.Now().After(deadline) {
			t.Fatalf("%d buffers recycled after GCs", p.reused.Load())
		}
		runtime.GC()
		runtime.Gosched()
	}

	// Take buffers until Get blocks: that happens at the bound, less the
	// few the device's readers hold (batch size 1 here).
	got := make(chan *msgBuf)
	go func() {
		for {
			got <- dev.GetMessageBuffer()
		}
	}()
	var taken []*msgBuf
	seen := map[*msgBuf]bool{}
	deadline = time.Now().Add(20 * time.Second)
	for blocked := false; !blocked; {
		select {
		case b := <-got:
			if seen[b] {
				t.Fatal("one buffer handed out twice")
			}
			seen[b] = true
			taken = append(taken, b)
			if len(taken) > p.max {
				t.Fatalf("more than %d buffers handed out", p.max)
			}
		case <-time.After(200 * time.Millisecond):
			// Get has blocked, or the taker is slow (a busy host):
			// blocked only at the bound; before it, wait on, bounded.
			if len(taken) >= p.max-8 {
				blocked = true
			} else if time.Now().After(deadline) {
				t.Fatalf("Get blocked after %d of %d buffers", len(taken), p.max)
			}
		}
	}
	dev.PutMessageBuffer(taken[0])
	taken = append(taken[1:], <-got) // unblocked by the Put
	for _, b := range taken {
		dev.PutMessageBuffer(b)
	}
	// The taker goroutine takes one more and stays blocked on the send
	// until the test exits; the device is closed by then.
}

func TestMessageBuffersConfig(t *testing.T) {
	for _, tc := range []struct {
		env  string
		cfg  int
		want int
	}{
		{"", 0, DefaultMessageBuffers},
		{"", 1000, 1000},
		{"", -1, 0},
		{"0", 1000, 0},
		{"2048", 0, 2048},
		{"junk", 700, 700},
	} {
		t.Setenv(messageBuffersEnv, tc.env) // "" counts as unset
		if got := messageBuffers(Config{MessageBuffers: tc.cfg}); got != tc.want {
			t.Errorf("env %q cfg %d: %d buffers, want %d", tc.env, tc.cfg, got, tc.want)
		}
	}
}

// TestMsgPoolClosed checks that a closed pool lets its buffers go.
func TestMsgPoolClosed(t *testing.T) {
	dev, w := newHeldDevice(t)
	p, err := newMsgPool(dev, minMessageBuffers)
	w.releaseReaders()
	if err != nil {
		t.Fatal(err)
	}
	dev.Close()
	p.close()
	// A finalizer that was already running when close was called may
	// still put its buffer back; finalizers run one at a time, so once a
	// later one has run, that one is done.
	waitFinalizers(t)
	before := p.reused.Load()
	for range 4 {
		runtime.GC()
	}
	waitFinalizers(t)
	if got := p.reused.Load() - before; got != 0 {
		t.Fatalf("closed pool put back %d buffers", got)
	}
}

// waitFinalizers returns once a finalizer queued now has run. A single
// goroutine runs all finalizers in turn, so any finalizer running when
// waitFinalizers was called has returned by then.
func waitFinalizers(t *testing.T) {
	t.Helper()
	done := make(chan struct{})
	s := new([16]byte) // not tiny-allocated: gets its own finalizer
	runtime.SetFinalizer(s, func(*[16]byte) { close(done) })
	s = nil
	deadline := time.Now().Add(20 * time.Second)
	for {
		runtime.GC()
		select {
		case <-done:
			return
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("a finalizer did not run within 20 s")
		}
	}
}
