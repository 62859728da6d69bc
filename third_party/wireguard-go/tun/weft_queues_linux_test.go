package tun

// Tests of weft's TUN queues (WEFT-PATCHES.md, "TUN queues") on a real
// TUN device in a network namespace of its own.

import (
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWeftQueues: a TUN made by CreateMultiQueueTUN with a second queue
// (NewQueue) that follows the first's read drain: 64 destinations get 8
// datagrams each, to 8 ports; every datagram is read once, each
// destination's whole from one queue (the steering program hashes the
// address pair, not the ports), and both queues carry some (all 64 on one
// of two would be a 1 in 2^63 chance). Once the second queue is closed, the first
// reads every flow. NewQueue refuses a TUN without IFF_MULTI_QUEUE, and
// outside the TUN's network namespace.
func TestWeftQueues(t *testing.T) {
	if _, err := NewQueue(&NativeTun{}); err == nil {
		t.Fatal("NewQueue of a TUN without IFF_MULTI_QUEUE")
	}
	l := newDrainLabWith(t, CreateMultiQueueTUN)
	var err error
	if !l.tun.multiQueue {
		t.Fatal("CreateMultiQueueTUN made a TUN without IFF_MULTI_QUEUE")
	}
	// A queue opened from another network namespace would be a new
	// TUN of the same name there: NewQueue refuses it. (Tried from a
	// scratch namespace, which goes with its thread.)
	other := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			other <- err
			return
		}
		q, err := NewQueue(l.tun)
		if err == nil {
			q.Close()
			err = errors.New("NewQueue opened a queue outside the TUN's network namespace")
		} else if strings.Contains(err.Error(), "another network namespace") {
			err = nil
		}
		other <- err
	}()
	if err := <-other; err != nil {
		t.Fatal(err)
	}
	var q Device
	l.in(func() { q, err = NewQueue(l.tun) })
	if err != nil {
		t.Fatal(err)
	}
	SetReadDrain(l.tun, true)
	if !q.(*NativeTun).first().drain.Load() {
		t.Fatal("the second queue does not follow the first's read drain")
	}
	const flows, per, base = 64, 8, 20000
	send := func() {
		for f := range flows {
			for k := range per {
				to := &unix.SockaddrInet4{Port: base + k, Addr: [4]byte{10, 255, 77, byte(2 + f)}}
				if err := unix.Sendto(l.sock, make([]byte, 36), 0, to); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// Each queue's reader reports the flow (destination - .2) of every
	// test datagram it reads, until its queue is closed.
	type got struct{ queue, flow int }
	ch := make(chan got, 2*flows*per)
	for qi, dev := range []Device{l.tun, q} {
		go func() {
			bufs, sizes := drainBufs(128)
			for {
				n, err := dev.Read(bufs, sizes, 16)
				if err != nil {
					return
				}
				for i := range n {
					p := bufs[i][16 : 16+sizes[i]]
					if len(p) < 28 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_UDP {
						continue
					}
					port, f := int(binary.BigEndian.Uint16(p[22:24])), int(p[19])-2
					if port >= base && port < base+per && p[18] == 77 && f >= 0 && f < flows {
						ch <- got{qi, f}
					}
				}
			}
		}()
	}
	// collect returns, for each flow, how many datagrams each queue read.
	collect := func() [flows][2]int {
		var by [flows][2]int
		for range flows * per {
			select {
			case g := <-ch:
				by[g.flow][g.queue]++
			case <-time.After(5 * time.Second):
				t.Fatalf("datagrams by flow and queue %v: some not read", by)
			}
		}
		select {
		case g := <-ch:
			t.Fatalf("a datagram of flow %d more than sent, on queue %d", g.flow, g.queue)
		case <-time.After(100 * time.Millisecond):
		}
		return by
	}
	send()
	used := [2]int{}
	for f, c := range collect() {
		if c[0] != 0 && c[1] != 0 || c[0]+c[1] != per {
			t.Fatalf("flow %d: %d datagrams on queue 0, %d on queue 1: want all %d on one", f, c[0], c[1], per)
		}
		if c[0] != 0 {
			used[0]++
		} else {
			used[1]++
		}
	}
	if used[0] == 0 || used[1] == 0 {
		t.Fatalf("flows by queue %v: the kernel used one queue of two", used)
	}
	q.Close()
	send()
	for f, c := range collect() {
		if c[0] != per {
			t.Fatalf("second queue closed: flow %d, %d datagrams on queue 0, want %d", f, c[0], per)
		}
	}
}
