package lab

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestNarrowPath: after NarrowPath(2, 1280) a 1280-byte datagram with DF
// from cell 1 reaches cell 2 and a 1281-byte one does not, and no ICMP
// tells the sender (its later sends still succeed); neither cell's own
// link MTU changed.
func TestNarrowPath(t *testing.T) {
	l := Setup(t, Config{Cells: 2, NoStart: true})
	if err := l.NarrowPath(2, 1280); err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(l.Cells[1].UnderlayIP, 7000)
	var ln net.PacketConn
	if err := InNetns(l.Cells[1].Netns, func() (err error) {
		ln, err = net.ListenPacket("udp4", dst.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := DialIn(l.Cells[0].Netns, "udp", dst.String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, _ := c.(syscall.Conn).SyscallConn()
	raw.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	})
	arrives := func(size int) bool {
		buf := make([]byte, 2000)
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := c.Write(make([]byte, size-28)); err != nil {
				t.Fatalf("send %d bytes: %v (the router told the sender?)", size, err)
			}
			ln.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if n, _, err := ln.ReadFrom(buf); err == nil {
				return n == size-28
			}
		}
		return false
	}
	if !arrives(1280) {
		t.Fatal("a 1280-byte datagram with DF did not cross the narrowed path")
	}
	if arrives(1281) {
		t.Fatal("a 1281-byte datagram with DF crossed a path of MTU 1280")
	}
	for _, c := range l.Cells {
		err := withHandle(c.Netns, func(h *netlink.Handle) error {
			link, err := h.LinkByName(c.cellLink)
			if err == nil && link.Attrs().MTU != 1500 {
				t.Errorf("cell %d: its underlay link has MTU %d, want 1500 (unchanged)", c.Index, link.Attrs().MTU)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
