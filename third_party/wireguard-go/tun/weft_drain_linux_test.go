package tun

// Tests of weft's read drain (WEFT-PATCHES.md, "TUN read drain") on a real
// TUN device in a network namespace of its own.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// drainLab is a TUN with offloads, 10.255.77.1/24, up, in a network
// namespace of its own, and a UDP socket of that namespace sending through
// it to 10.255.77.2.
type drainLab struct {
	tun  *NativeTun
	sock int
	do   chan func() // run on the namespace's thread (in)
}

// in runs fn on the thread that owns the namespace.
func (l *drainLab) in(fn func()) {
	ran := make(chan struct{})
	l.do <- func() { fn(); close(ran) }
	<-ran
}

func newDrainLab(t *testing.T) *drainLab {
	t.Helper()
	return newDrainLabWith(t, CreateTUN)
}

// newDrainLabWith is newDrainLab with the TUN made by create.
func newDrainLabWith(t *testing.T, create func(name string, mtu int) (Device, error)) *drainLab {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root and /dev/net/tun, and CI=true: must not skip")
		}
		t.Skip("needs root and /dev/net/tun (run as root; CI runs it)")
	}
	type result struct {
		l   *drainLab
		err error
	}
	res := make(chan result)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	// The namespace belongs to one locked thread, which exits with the
	// goroutine (and the namespace with its last user).
	go func() {
		runtime.LockOSThread()
		l, err := func() (*drainLab, error) {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return nil, fmt.Errorf("unshare: %w", err)
			}
			ns := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
			dev, err := create("wdrain0", 1420)
			if err != nil {
				return nil, err
			}
			nt := dev.(*NativeTun)
			if !nt.vnetHdr {
				dev.Close()
				return nil, errors.New("the TUN has no offloads (IFF_VNET_HDR)")
			}
			for _, args := range [][]string{
				{"sysctl", "-qw", "net.ipv6.conf.wdrain0.disable_ipv6=1"},
				{"ip", "addr", "add", "10.255.77.1/24", "dev", "wdrain0"},
				{"ip", "link", "set", "wdrain0", "up", "txqueuelen", "1000"},
			} {
				if out, err := exec.Command("nsenter", append([]string{"--net=" + ns}, args...)...).CombinedOutput(); err != nil {
					dev.Close()
					return nil, fmt.Errorf("%v: %v %s", args, err, out)
				}
			}
			sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			if err != nil {
				dev.Close()
				return nil, err
			}
			return &drainLab{tun: nt, sock: sock, do: make(chan func())}, nil
		}()
		res <- result{l, err}
		if l == nil {
			return
		}
		for {
			select {
			case fn := <-l.do:
				fn()
			case <-done:
				return
			}
		}
	}()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() {
		unix.Close(r.l.sock)
		r.l.tun.Close()
	})
	return r.l
}

// send sends n datagrams of 36 bytes (64 on the wire) to 10.255.77.2:port.
func (l *drainLab) send(t *testing.T, n int, port int) {
	t.Helper()
	to := &unix.SockaddrInet4{Port: port, Addr: [4]byte{10, 255, 77, 2}}
	for i := range n {
		if err := unix.Sendto(l.sock, make([]byte, 36), 0, to); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
}

// udpTo counts the IPv4 UDP packets to port among the first n of bufs.
func udpTo(bufs [][]byte, sizes []int, n, offset, port int) int {
	c := 0
	for i := range n {
		p := bufs[i][offset : offset+sizes[i]]
		if len(p) >= 28 && p[0]>>4 == 4 && p[9] == unix.IPPROTO_UDP && int(binary.BigEndian.Uint16(p[22:24])) == port {
			c++
		}
	}
	return c
}

func drainBufs(n int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 16+1500)
	}
	return bufs, make([]int, n)
}

// readAll reads until want packets to port arrived, and returns the number
// of each Read call's packets to port.
func readAll(t *testing.T, dev *NativeTun, bufs [][]byte, sizes []int, want, port int) []int {
	t.Helper()
	var calls []int
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < want {
		if time.Now().After(deadline) {
			t.Fatalf("after %d reads %v, %d of %d datagrams", len(calls), calls, got, want)
		}
		n, err := dev.Read(bufs, sizes, 16)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		c := udpTo(bufs, sizes, n, 16, port)
		if c > 0 {
			calls = append(calls, c)
		}
		got += c
	}
	return calls
}

// TestWeftReadDrain: packets the kernel queued on the TUN come out of one
// Read, up to the batch; without the drain, one per Read.
func TestWeftReadDrain(t *testing.T) {
	l := newDrainLab(t)
	bufs, sizes := drainBufs(conn.IdealBatchSize)

	SetReadDrain(l.tun, false)
	l.send(t, 20, 9001)
	if calls := readAll(t, l.tun, bufs, sizes, 20, 9001); len(calls) != 20 {
		t.Errorf("without the drain: %d reads for 20 datagrams, want 20 (one each)", len(calls))
	}

	SetReadDrain(l.tun, true)
	l.send(t, 20, 9002)
	if calls := readAll(t, l.tun, bufs, sizes, 20, 9002); len(calls) != 1 {
		t.Errorf("with the drain: 20 datagrams came in reads of %v, want one read", calls)
	}

	// A batch smaller than the queue: full batches, the rest next.
	l.send(t, 20, 9003)
	small, smallSizes := drainBufs(8)
	calls := readAll(t, l.tun, small, smallSizes, 20, 9003)
	if fmt.Sprint(calls) != "[8 8 4]" {
		t.Errorf("20 datagrams in batches of 8: reads of %v, want [8 8 4]", calls)
	}
}

// TestWeftReadDrainClose: a Read waiting on an empty TUN returns
// os.ErrClosed when the device is closed (the agent must be able to stop).
func TestWeftReadDrainClose(t *testing.T) {
	l := newDrainLab(t)
	SetReadDrain(l.tun, true)
	bufs, sizes := drainBufs(conn.IdealBatchSize)
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := l.tun.Read(bufs, sizes, 16); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err := <-errc:
		t.Fatalf("Read returned before Close: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	l.tun.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still waiting 5 s after Close")
	}
}

// TestWeftVirtioSegments: the bound readDrain uses to keep a GSO packet
// that would not fit for the next Read.
func TestWeftVirtioSegments(t *testing.T) {
	mk := func(h virtioNetHdr, payload int) []byte {
		b := make([]byte, virtioNetHdrLen+payload)
		if err := h.encode(b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		name string
		in   []byte
		want int
	}{
		{"no gso", mk(virtioNetHdr{gsoType: unix.VIRTIO_NET_HDR_GSO_NONE}, 100), 1},
		{"tcp4 3 segments", mk(virtioNetHdr{gsoType: unix.VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 100, csumStart: 20}, 20+20+250), 3},
		{"tcp4 64k", mk(virtioNetHdr{gsoType: unix.VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1368, csumStart: 20}, 65000), 48},
		{"udp l4", mk(virtioNetHdr{gsoType: unix.VIRTIO_NET_HDR_GSO_UDP_L4, gsoSize: 36, csumStart: 20}, 20+8+36*10), 11},
		{"short", []byte{1, 2}, 1},
	} {
		if got := virtioSegments(c.in); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// TestWeftDrainAllocs: with the drain, a Read and a Write allocate nothing
// (their RawConn callbacks are made once, not per call).
func TestWeftDrainAllocs(t *testing.T) {
	l := newDrainLab(t)
	SetReadDrain(l.tun, true)
	bufs, sizes := drainBufs(1)
	const runs = 50
	l.send(t, runs+10, 9006) // one packet a Read (batch of 1)
	readAllocs := testing.AllocsPerRun(runs, func() {
		if _, err := l.tun.Read(bufs, sizes, 16); err != nil {
			t.Fatal(err)
		}
	})
	if readAllocs != 0 {
		t.Errorf("Read with the drain: %v allocations per call, want 0", readAllocs)
	}
	// A UDP datagram to a port nothing listens on, written into the TUN.
	pkt := make([]byte, 16+28+8)
	ip := pkt[16:]
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	copy(ip[12:16], []byte{10, 255, 77, 2})
	copy(ip[16:20], []byte{10, 255, 77, 1})
	binary.BigEndian.PutUint16(ip[10:], ^checksum(ip[:20], 0))
	binary.BigEndian.PutUint16(ip[20:], 9999)
	binary.BigEndian.PutUint16(ip[22:], 9007)
	binary.BigEndian.PutUint16(ip[24:], uint16(len(ip)-20))
	wbufs := [][]byte{pkt}
	writeAllocs := testing.AllocsPerRun(runs, func() {
		if _, err := l.tun.Write(wbufs, 16); err != nil {
			t.Fatal(err)
		}
	})
	if writeAllocs != 0 {
		t.Errorf("Write with the drain: %v allocations per call, want 0", writeAllocs)
	}
}
