package overlay

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lab"
)

// BenchmarkFastPathSend: what one 64-byte UDP datagram costs the sending
// container, from its socket into the cell's TUN queue: the veth, then the
// cell's IP stack with weft's routing and guard (stack) or the fast path
// (fast), in turn, twice, with a reader draining the TUN. cpu-ns/op is the
// sending thread's CPU time (getrusage) per datagram: the veth's receive
// runs in its softirq.
func BenchmarkFastPathSend(b *testing.B) {
	inScratchNetns(b, func() error {
		c := newFastPathCell(b, "weftb0")
		defer c.close()
		g := newGuard(c.cfg.Interface, netip.Addr{}, 51820, c.cfg.OverlayCIDR)
		g.cell = CellAddr(c.cfg.LocalSubnet)
		if err := g.install(); err != nil {
			return err
		}
		entries := []GuardEntry{{Veth: c.veth, IP: c.ip}}
		if _, err := g.Sync(entries); err != nil {
			return err
		}
		fp, tunFile, ctr := c.fp, c.tun, c.ctr
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			buf := make([]byte, 2048)
			for {
				select {
				case <-stop:
					return
				default:
				}
				tunFile.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				tunFile.Read(buf)
			}
		}()
		for _, mode := range []string{"stack", "fast", "stack", "fast"} {
			want := entries
			if mode == "stack" {
				want = nil
			}
			if err := fp.Sync(want); err != nil {
				return err
			}
			b.Run(mode, func(b *testing.B) {
				err := lab.InNetns(ctr, func() error {
					c, err := net.Dial("udp4", "10.255.2.9:7000")
					if err != nil {
						return err
					}
					defer c.Close()
					p := make([]byte, 36)
					var r0, r1 unix.Rusage
					b.ResetTimer()
					unix.Getrusage(unix.RUSAGE_THREAD, &r0)
					for b.Loop() {
						c.Write(p)
					}
					unix.Getrusage(unix.RUSAGE_THREAD, &r1)
					cpu := time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
					b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			})
		}
		return nil
	})
}
