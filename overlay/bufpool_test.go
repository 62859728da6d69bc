package overlay

import (
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// TestMsgPoolBounds checks that a device takes its buffers from the pool,
// each once, and that Get blocks at the bound until one is put back.
func TestMsgPoolBounds(t *testing.T) {
	p, err := newMsgPool(minMessageBuffers)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	dev := device.NewDeviceWithOptions(NewWrapper(tuntest.NewChannelTUN().TUN(), OpenFilter{}),
		bindtest.NewChannelBinds()[0], device.NewLogger(device.LogLevelError, "test: "),
		device.Options{MessageBuffers: p})
	defer dev.Close()

	got := make(chan *msgBuf)
	go func() {
		for {
			got <- dev.GetMessageBuffer()
		}
	}()
	var taken []*msgBuf
	seen := map[*msgBuf]bool{}
	lo := uintptr(unsafe.Pointer(&p.arena[0]))
	deadline := time.Now().Add(20 * time.Second)
	for blocked := false; !blocked; {
		select {
		case b := <-got:
			if seen[b] {
				t.Fatal("one buffer handed out twice")
			}
			seen[b] = true
			if off := uintptr(unsafe.Pointer(b)) - lo; off%msgStride != 0 || off >= uintptr(len(p.arena)) {
				t.Fatalf("buffer at offset %d of the %d-byte mapping", off, len(p.arena))
			}
			taken = append(taken, b)
			if len(taken) > p.max {
				t.Fatalf("more than %d buffers handed out", p.max)
			}
		case <-time.After(200 * time.Millisecond):
			// Get has blocked, or the taker is slow (a busy host):
			// blocked only when every buffer is out (the device's
			// readers hold a few: batch size 1 here).
			if p.out() == p.max {
				blocked = true
			} else if time.Now().After(deadline) {
				t.Fatalf("Get blocked after %d of %d buffers", len(taken), p.max)
			}
		}
	}
	if len(taken) < p.max-8 {
		t.Fatalf("the device holds %d buffers, the test %d of %d", p.max-len(taken), len(taken), p.max)
	}
	dev.PutMessageBuffer(taken[0])
	select {
	case b := <-got: // unblocked by the Put
		if b != taken[0] {
			t.Fatal("Get after Put returned another buffer than the one put back")
		}
		taken[0] = b
	case <-time.After(10 * time.Second):
		t.Fatal("Get still blocked 10 s after a Put")
	}
	for _, b := range taken {
		dev.PutMessageBuffer(b)
	}
	// The taker goroutine takes one more and stays blocked on the send
	// until the test exits; the device is closed by then.
}

// TestMsgPoolPagesResidentOnlyWhenWritten: the point of the pool's
// mapping. No page of it is resident until a packet is written; Gets
// return the last buffer put back, so the resident ones are reused; close
// gives them back.
func TestMsgPoolPagesResidentOnlyWhenWritten(t *testing.T) {
	p, err := newMsgPool(minMessageBuffers)
	if err != nil {
		t.Fatal(err)
	}
	resident := func() int {
		vec := make([]byte, (len(p.arena)+4095)/4096)
		if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&p.arena[0])), uintptr(len(p.arena)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
			t.Fatal("mincore:", e)
		}
		n := 0
		for _, v := range vec {
			n += int(v & 1)
		}
		return n
	}
	if n := resident(); n != 0 {
		t.Fatalf("%d pages resident before any use", n)
	}
	for range 1000 { // a reader's cycle: take, write a packet, give back
		b := p.Get()
		copy(b[:], make([]byte, 1500))
		p.Put(b)
	}
	if n := resident(); n != 1 {
		t.Fatalf("%d pages resident after 1000 packets through one buffer, want 1", n)
	}
	b1, b2 := p.Get(), p.Get()
	b1[0], b2[0] = 1, 1
	p.Put(b1)
	p.Put(b2)
	if n := resident(); n != 2 {
		t.Fatalf("%d pages resident with two buffers written, want 2", n)
	}
	p.close()
	if n := resident(); n != 0 {
		t.Fatalf("%d pages resident after close", n)
	}
}

func TestMessageBuffersConfig(t *testing.T) {
	for _, tc := range []struct {
		env    string
		cfg    int
		queues int
		want   int
	}{
		{"", 0, 1, DefaultMessageBuffers},
		{"", 1000, 1, 1000},
		{"", -1, 1, 0},
		{"0", 1000, 1, 0},
		{"2048", 0, 1, 2048},
		{"junk", 700, 1, 700},
		// Each more queue's readers hold 3 batches of 128 for good.
		{"", 0, 2, DefaultMessageBuffers + 384},
		{"", 0, 4, DefaultMessageBuffers + 3*384},
		{"", 600, 4, 4*384 + 128}, // a bound below the readers' batches is raised
		{"", -1, 4, 0},
	} {
		t.Setenv(messageBuffersEnv, tc.env) // "" counts as unset
		if got := messageBuffers(Config{MessageBuffers: tc.cfg}, tc.queues); got != tc.want {
			t.Errorf("env %q cfg %d, %d queues: %d buffers, want %d", tc.env, tc.cfg, tc.queues, got, tc.want)
		}
	}
}

// TestDefaultQueues: one queue below 3 CPUs (a second measured slower
// there), one per CPU from 3 up to MaxQueues; the environment overrides
// the default, and the queued path and the water backend have one.
func TestDefaultQueues(t *testing.T) {
	for cpus, want := range map[int]int{1: 1, 2: 1, 3: 3, 4: 4, 8: 8, 64: MaxQueues} {
		if got := defaultQueues(cpus); got != want {
			t.Errorf("%d CPUs: %d queues, want %d", cpus, got, want)
		}
	}
	t.Setenv(queuesEnv, "4")
	if n, err := queuesOf(Config{}, DataPathInline); err != nil || n != 4 {
		t.Errorf("%s=4: %d queues (%v), want 4", queuesEnv, n, err)
	}
	if n, _ := queuesOf(Config{}, DataPathQueued); n != 1 {
		t.Errorf("queued data path: %d queues, want 1", n)
	}
	if n, _ := queuesOf(Config{TUNBackend: TUNWater}, DataPathInline); n != 1 {
		t.Errorf("water backend: %d queues, want 1", n)
	}
	t.Setenv(queuesEnv, "lots")
	if _, err := queuesOf(Config{}, DataPathInline); err == nil || !strings.Contains(err.Error(), queuesEnv) {
		t.Errorf("%s=lots: %v, want an error naming it", queuesEnv, err)
	}
	t.Setenv(queuesEnv, "")
	if _, err := queuesOf(Config{Queues: 65}, DataPathInline); err == nil {
		t.Error("Config.Queues 65: no error")
	}
}
