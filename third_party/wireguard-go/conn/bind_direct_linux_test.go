/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package conn

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// weft's tests of DirectBind (bind_direct_linux.go).

// openBind opens b on a free port and closes it at the end of the test.
func openBind(t *testing.T, b Bind) ([]ReceiveFunc, uint16) {
	t.Helper()
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return fns, port
}

// recvFn returns fns's receiver for the family of addr.
func recvFn(t *testing.T, fns []ReceiveFunc, addr netip.Addr) ReceiveFunc {
	t.Helper()
	want := "v4"
	if addr.Is6() {
		want = "v6"
	}
	for _, fn := range fns {
		if fn.PrettyName() == want {
			return fn
		}
	}
	t.Fatalf("no %s receiver among %d", want, len(fns))
	return nil
}

func newRecvBufs() ([][]byte, []int, []Endpoint) {
	bufs := make([][]byte, IdealBatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<16-1)
	}
	return bufs, make([]int, IdealBatchSize), make([]Endpoint, IdealBatchSize)
}

// testDatagrams is a batch of n datagrams of size bytes, distinct per seed.
func testDatagrams(seed, n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size)
		for j := range out[i] {
			out[i][j] = byte(seed*131 + i*7 + j)
		}
	}
	return out
}

// withCap returns copies of bufs in buffers of 64 KiB capacity, as the
// device's are (StdNetBind's coalescing appends into their spare room).
func withCap(bufs [][]byte) [][]byte {
	out := make([][]byte, len(bufs))
	for i, b := range bufs {
		out[i] = append(make([]byte, 0, 1<<16), b...)
	}
	return out
}

// exchange sends want from tx to dst in one Send and receives them with
// rx, checking order, content and source port; it returns how many
// recvmmsg messages they came in, if rx is a DirectBind's.
func exchange(t *testing.T, tx Bind, dst Endpoint, rx ReceiveFunc, srcPort uint16, want [][]byte) {
	t.Helper()
	if err := tx.Send(withCap(want), dst); err != nil {
		t.Fatalf("send %d datagrams: %v", len(want), err)
	}
	bufs, sizes, eps := newRecvBufs()
	got := 0
	for got < len(want) {
		n, err := rx(bufs, sizes, eps)
		if err != nil {
			t.Fatalf("receive after %d of %d datagrams: %v", got, len(want), err)
		}
		for i := range n {
			if sizes[i] == 0 {
				continue
			}
			if got == len(want) {
				t.Fatalf("more than the %d datagrams sent", len(want))
			}
			if !bytes.Equal(bufs[i][:sizes[i]], want[got]) {
				t.Fatalf("datagram %d of %d: got %d bytes, want %d, or content differs", got, len(want), sizes[i], len(want[got]))
			}
			ap, err := netip.ParseAddrPort(eps[i].DstToString())
			if err != nil || ap.Port() != srcPort || ap.Addr() != dst.DstIP() {
				t.Fatalf("datagram %d: source %s, want %v port %d", got, eps[i].DstToString(), dst.DstIP(), srcPort)
			}
			got++
		}
	}
}

// batches of datagrams each test sends: several sizes, a run of 64 equal
// ones (one GSO message; one GRO message), one with a short tail, 128 of
// mixed sizes, and 64 of the largest size under loopback's MTU.
func testBatches() [][][]byte {
	b := [][][]byte{
		testDatagrams(1, 1, 1),
		testDatagrams(2, 1, 64),
		testDatagrams(3, 1, 1400),
		testDatagrams(4, 1, 9000),
		testDatagrams(5, 64, 64),
		append(testDatagrams(6, 20, 1200), testDatagrams(7, 1, 100)...),
		testDatagrams(9, 64, 1000),
	}
	var mixed [][]byte
	for i := range 128 {
		mixed = append(mixed, testDatagrams(10+i, 1, 32+(i/3)*11)...)
	}
	return append(b, mixed)
}

func directState4(t *testing.T, b Bind) *directState {
	t.Helper()
	st := b.(*DirectBind).state.Load()
	if st == nil || st.v4 == nil {
		t.Fatal("direct bind has no IPv4 socket")
	}
	return st
}

func kernelHasGRO() bool {
	major, minor := kernelVersion()
	return major > 5 || (major == 5 && minor >= 12)
}

// TestDirectBindExchange: two DirectBinds on 127.0.0.1, with and without
// GSO on the sender and GRO on the receiver.
func TestDirectBindExchange(t *testing.T) {
	for _, mode := range []struct {
		name     string
		gso, gro bool
	}{{"gso-gro", true, true}, {"gso", true, false}, {"gro", false, true}, {"plain", false, false}} {
		t.Run(mode.name, func(t *testing.T) {
			a, b := NewDirectBind(), NewDirectBind()
			_, portA := openBind(t, a)
			fnsB, portB := openBind(t, b)
			sa, sb := directState4(t, a), directState4(t, b)
			if mode.gso && !sa.v4.txGSO.Load() {
				t.Skip("no UDP_SEGMENT on this kernel")
			}
			if mode.gro && !sb.v4.rxGRO {
				if kernelHasGRO() {
					t.Fatal("UDP_GRO not on, though the kernel has it")
				}
				t.Skip("no UDP_GRO on this kernel")
			}
			sa.v4.txGSO.Store(mode.gso)
			if !mode.gro && sb.v4.rxGRO {
				var err error
				sb.v4.rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 0) })
				if err != nil {
					t.Fatal(err)
				}
				sb.v4.rxGRO = false
			}
			dst, _ := b.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", portB))
			rx := recvFn(t, fnsB, dst.DstIP())
			for i, batch := range testBatches() {
				exchange(t, a, dst, rx, portA, batch)
				if i == 4 && mode.gso && mode.gro && sb.rx4.read != 1 {
					// 64 datagrams of 64 bytes: one GSO message on
					// the wire, one GRO message read and split.
					t.Fatalf("64 equal datagrams came in %d messages, want 1 (GSO and GRO)", sb.rx4.read)
				}
			}
		})
	}
}

// TestDirectBindStdNetBind: a DirectBind and a StdNetBind, both ways.
func TestDirectBindStdNetBind(t *testing.T) {
	d, s := NewDirectBind(), NewStdNetBind()
	fnsD, portD := openBind(t, d)
	fnsS, portS := openBind(t, s)
	toS, _ := d.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", portS))
	toD, _ := s.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", portD))
	for _, batch := range testBatches() {
		exchange(t, d, toS, recvFn(t, fnsS, toS.DstIP()), portD, batch)
		exchange(t, s, toD, recvFn(t, fnsD, toD.DstIP()), portS, batch)
	}
	// Each sends to the endpoint the other's receiver returned.
	bufs, sizes, eps := newRecvBufs()
	if err := d.Send([][]byte{[]byte("ping")}, toS); err != nil {
		t.Fatal(err)
	}
	if _, err := recvFn(t, fnsS, toS.DstIP())(bufs, sizes, eps); err != nil {
		t.Fatal(err)
	}
	exchange(t, s, eps[0], recvFn(t, fnsD, toD.DstIP()), portS, testDatagrams(1, 3, 100))
}

// TestDirectBindIPv6 exchanges datagrams over ::1.
func TestDirectBindIPv6(t *testing.T) {
	if c, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		c.Close()
	}
	a, b := NewDirectBind(), NewDirectBind()
	_, portA := openBind(t, a)
	fnsB, portB := openBind(t, b)
	if len(fnsB) != 2 {
		t.Fatalf("%d receivers, want 2 (IPv4 and IPv6 on port %d)", len(fnsB), portB)
	}
	dst, _ := b.ParseEndpoint(fmt.Sprintf("[::1]:%d", portB))
	rx := recvFn(t, fnsB, dst.DstIP())
	for _, batch := range testBatches() {
		exchange(t, a, dst, rx, portA, batch)
	}
	// The IPv6 socket has the IPv4 socket's port.
	s := NewStdNetBind()
	fnsS, portS := openBind(t, s)
	toS, _ := a.ParseEndpoint(fmt.Sprintf("[::1]:%d", portS))
	exchange(t, a, toS, recvFn(t, fnsS, toS.DstIP()), portA, testDatagrams(2, 64, 64))
}

// waiting reports whether a goroutine whose stack holds fn waits in the
// runtime's poller (IO wait).
func waiting(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) && strings.Contains(strings.SplitN(g, "\n", 2)[0], "[IO wait") {
			return true
		}
	}
	return false
}

// TestDirectBindCloseUnblocks: Close ends a receiver waiting in the
// runtime's poller, and receivers return net.ErrClosed from then on.
func TestDirectBindCloseUnblocks(t *testing.T) {
	b := NewDirectBind()
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, len(fns))
	for _, fn := range fns {
		go func() {
			bufs, sizes, eps := newRecvBufs()
			_, err := fn(bufs, sizes, eps)
			errs <- err
		}()
	}
	// Wait until a receiver waits in the runtime's poller.
	for deadline := time.Now().Add(10 * time.Second); !waiting("(*directRx).receive"); {
		if time.Now().After(deadline) {
			t.Fatal("no receiver waiting in the poller after 10 s")
		}
		time.Sleep(time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return in 10 s (a receiver still waiting?)")
	}
	for range fns {
		select {
		case err := <-errs:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("blocked receiver returned %v, want net.ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not end a waiting receiver in 10 s")
		}
	}
	bufs, sizes, eps := newRecvBufs()
	for _, fn := range fns {
		if _, err := fn(bufs, sizes, eps); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("receive after Close: %v, want net.ErrClosed", err)
		}
	}
	ep, _ := b.ParseEndpoint("127.0.0.1:9")
	if err := b.Send([][]byte{{1}}, ep); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("send after Close: %v, want net.ErrClosed", err)
	}
	// It opens again, and the old receivers stay closed.
	fns2, _ := openBind(t, b)
	if len(fns2) == 0 {
		t.Fatal("no receivers after reopening")
	}
	if _, err := fns[0](bufs, sizes, eps); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("old receiver after reopening: %v, want net.ErrClosed", err)
	}
}

// TestDirectBindAllocs: Send and a ReceiveFunc call allocate nothing once
// warm, with datagrams from two sources in turn (the endpoint cache).
func TestDirectBindAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	a, c, b := NewDirectBind(), NewDirectBind(), NewDirectBind()
	openBind(t, a)
	openBind(t, c)
	fnsB, portB := openBind(t, b)
	dst, _ := a.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", portB))
	rx := recvFn(t, fnsB, dst.DstIP())
	bufs, sizes, eps := newRecvBufs()
	receive := func(want int) {
		for got := 0; got < want; {
			n, err := rx(bufs, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range sizes[:n] {
				if s > 0 {
					got++
				}
			}
		}
	}
	for _, batch := range [][][]byte{testDatagrams(1, 1, 64), withCap(testDatagrams(2, 64, 64)), withCap(testDatagrams(3, 128, 100))} {
		// Sends of one batch only.
		sendAllocs := testing.AllocsPerRun(20, func() {
			if err := a.Send(batch, dst); err != nil {
				t.Fatal(err)
			}
		})
		receive(21 * len(batch))
		// A send from each source and the receives that take them.
		pairAllocs := testing.AllocsPerRun(20, func() {
			for _, tx := range []Bind{a, c} {
				if err := tx.Send(batch, dst); err != nil {
					t.Fatal(err)
				}
				receive(len(batch))
			}
		})
		if sendAllocs != 0 || pairAllocs != 0 {
			t.Errorf("batch of %d: %v allocations per Send, %v per two Sends and their receives; want 0", len(batch), sendAllocs, pairAllocs)
		}
	}
}

// BenchmarkBind64 sends and receives batches of 64-byte datagrams over
// 127.0.0.1, DirectBind and StdNetBind in the same run.
func BenchmarkBind64(b *testing.B) {
	for _, bind := range []struct {
		name string
		new  func() Bind
	}{{"Direct", NewDirectBind}, {"StdNet", NewStdNetBind}} {
		for _, batch := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/batch=%d", bind.name, batch), func(b *testing.B) {
				tx, rx := bind.new(), bind.new()
				if _, _, err := tx.Open(0); err != nil {
					b.Fatal(err)
				}
				defer tx.Close()
				fns, port, err := rx.Open(0)
				if err != nil {
					b.Fatal(err)
				}
				defer rx.Close()
				dst, _ := tx.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", port))
				var fn ReceiveFunc
				for _, f := range fns {
					if f.PrettyName() == "v4" {
						fn = f
					}
				}
				msgs := withCap(testDatagrams(1, batch, 64))
				bufs, sizes, eps := newRecvBufs()
				b.SetBytes(int64(64 * batch))
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if err := tx.Send(msgs, dst); err != nil {
						b.Fatal(err)
					}
					for got := 0; got < batch; {
						n, err := fn(bufs, sizes, eps)
						if err != nil {
							b.Fatal(err)
						}
						for _, s := range sizes[:n] {
							if s > 0 {
								got++
							}
						}
					}
				}
			})
		}
	}
}

// TestDirectBindQueues: NewDirectBindQueues(2) has two sockets per family
// on one port (SO_REUSEPORT) and a ReceiveFunc for each; datagrams from 16
// source ports reach the bind, each once and intact, and the kernel
// spreads them over both receivers (by source port: all 16 on one of two
// sockets would be a 1 in 32768 chance). SetMark and Close reach every
// socket.
func TestDirectBindQueues(t *testing.T) {
	b := NewDirectBindQueues(2)
	fns, port := openBind(t, b)
	var v4 []ReceiveFunc
	for _, fn := range fns {
		if fn.PrettyName() == "v4" {
			v4 = append(v4, fn)
		}
	}
	if len(v4) != 2 {
		t.Fatalf("%d IPv4 receivers, want 2 (of %d)", len(v4), len(fns))
	}
	st := b.(*DirectBind).state.Load()
	if err := b.SetMark(0x77); err != nil {
		t.Fatal(err)
	}
	for _, s := range st.all() {
		if s == nil {
			continue
		}
		var mark int
		var err error
		s.rc.Control(func(fd uintptr) { mark, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		if err != nil || mark != 0x77 {
			t.Fatalf("socket %s: mark %#x (%v), want 0x77", s.laddr, mark, err)
		}
	}
	const senders = 16
	got := make(chan string, senders)
	for i, rx := range v4 {
		go func() {
			bufs, sizes, eps := newRecvBufs()
			for {
				n, err := rx(bufs, sizes, eps)
				if err != nil {
					return
				}
				for k := range n {
					got <- fmt.Sprintf("%d:%s", i, bufs[k][:sizes[k]])
				}
			}
		}()
	}
	for s := range senders {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, "datagram %d", s); err != nil {
			t.Fatal(err)
		}
	}
	seen, by := map[string]bool{}, map[string]int{}
	for range senders {
		select {
		case m := <-got:
			rx, msg, _ := strings.Cut(m, ":")
			if seen[msg] || !strings.HasPrefix(msg, "datagram ") {
				t.Fatalf("received %q twice or corrupt", msg)
			}
			seen[msg] = true
			by[rx]++
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d datagrams received", len(seen), senders)
		}
	}
	if len(by) != 2 {
		t.Fatalf("datagrams by receiver %v: the kernel used one socket of two", by)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, s := range st.all() {
		if s != nil && !s.closed.Load() {
			t.Fatalf("socket %s open after Close", s.laddr)
		}
	}
}
