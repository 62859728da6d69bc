package overlay

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/internal/lab"
)

// openTestTUN makes a TUN device without packet information and returns
// its file (non-blocking, so reads take deadlines).
func openTestTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}

// forwarded returns the IPv4 datagrams this thread's namespace forwarded.
func forwarded(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/thread-self/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	var names []string
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 || fields[0] != "Ip:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "ForwDatagrams" {
				v, _ := strconv.Atoi(fields[i])
				return v
			}
		}
	}
	t.Fatal("no Ip: ForwDatagrams in /proc/thread-self/net/snmp")
	return 0
}

// fastPathCell is a scratch cell for the fast path's tests: weft0 a plain
// TUN (no packet information), weft's routing recipe (setupRouting), and
// one container bound to ip, behind veth, with a fastPath that serves
// nothing yet. Call it inside inScratchNetns; close undoes it.
type fastPathCell struct {
	cfg   Config
	tun   *os.File
	ctr   string
	veth  string
	ip    netip.Addr
	fp    *fastPath
	close func()
}

func newFastPathCell(t testing.TB, tunName string) *fastPathCell {
	t.Helper()
	// Sources other than the binding reach the stack's forwarding (the
	// tests check which path they take): no reverse-path filter.
	for _, p := range []string{"all", "default"} {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+p+"/rp_filter", []byte("0"), 0); err != nil {
			t.Fatal(err)
		}
	}
	tun, err := openTestTUN(tunName)
	if err != nil {
		t.Fatal(err)
	}
	c := &fastPathCell{tun: tun, ctr: lab.RunPrefix() + "-fpc", ip: netip.MustParseAddr("10.255.1.2"),
		cfg: Config{Interface: tunName, MTU: 1420, LocalSubnet: netip.MustParsePrefix("10.255.1.0/24"),
			OverlayCIDR: netip.MustParsePrefix("10.255.0.0/16"), DeliveryTable: 30565, RulePriority: 100}}
	c.veth = attach.HostVethName(c.ctr)
	c.close = func() { tun.Close() }
	if err := setupRouting(c.cfg); err != nil {
		c.close()
		t.Fatal(err)
	}
	attach.DetachContainer(c.ctr) // a leftover of this pid
	if err := attach.Container(attach.Config{MTU: c.cfg.MTU, DeliveryTable: c.cfg.DeliveryTable, LocalSubnet: c.cfg.LocalSubnet}, c.ctr, c.ip); err != nil {
		c.close()
		t.Fatal(err)
	}
	c.fp = newFastPath(slog.New(slog.DiscardHandler), tunName, CellAddr(c.cfg.LocalSubnet), c.cfg.OverlayCIDR)
	c.close = func() {
		c.fp.Close()
		attach.DetachContainer(c.ctr)
		tun.Close()
	}
	return c
}

// TestFastPath: a container's UDP datagram to the overlay reaches the TUN
// without the cell forwarding it (its TTL intact), while one with a
// source that is not the veth's binding, a TCP SYN, and every packet once
// the binding is gone take the cell's IP stack (TTL one less, counted as
// forwarded).
func TestFastPath(t *testing.T) {
	inScratchNetns(t, func() error {
		c := newFastPathCell(t, "weftf0")
		defer c.close()
		ctr, ip, fp := c.ctr, c.ip, c.fp
		spoof := netip.MustParseAddr("10.255.1.77")
		if err := lab.InNetns(ctr, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: spoof.AsSlice(), Mask: net.CIDRMask(32, 32)}})
		}); err != nil {
			t.Fatal(err)
		}

		if err := fp.Sync([]GuardEntry{{Veth: c.veth, IP: ip}}); err != nil {
			t.Fatal(err)
		}
		if v := fp.Veths(); len(v) != 1 || v[0] != c.veth {
			t.Fatalf("fast path serves %v, want [%s]", v, c.veth)
		}

		dst := netip.MustParseAddrPort("10.255.2.9:7000")
		// send sends one packet from the container (from src, over proto,
		// a UDP payload of size bytes) and returns the TTL of the first
		// packet to dst that the TUN gives, and the cell's forwarded
		// count's change.
		send := func(proto string, src netip.Addr, size int) (ttl int, fwd int) {
			t.Helper()
			before := forwarded(t)
			err := lab.InNetns(ctr, func() error {
				d := net.Dialer{LocalAddr: &net.UDPAddr{IP: src.AsSlice()}, Timeout: 50 * time.Millisecond}
				if proto == "tcp" {
					d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
					c, err := d.Dial("tcp4", dst.String())
					if err == nil {
						c.Close()
					}
					return nil // nothing answers the SYN
				}
				c, err := d.Dial("udp4", dst.String())
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write(make([]byte, size))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2048)
			c.tun.SetReadDeadline(time.Now().Add(2 * time.Second))
			for {
				n, err := c.tun.Read(buf)
				if err != nil {
					t.Fatalf("%s from %v: nothing on the TUN: %v", proto, src, err)
				}
				if n >= 20 && buf[0]>>4 == 4 && netip.AddrFrom4([4]byte(buf[16:20])) == dst.Addr() &&
					netip.AddrFrom4([4]byte(buf[12:16])) == src {
					return int(buf[8]), forwarded(t) - before
				}
			}
		}
		if ttl, fwd := send("udp", ip, 14); ttl != 64 || fwd != 0 {
			t.Errorf("UDP from the bound address: TTL %d and %d forwarded, want 64 and 0 (the fast path)", ttl, fwd)
		}
		if ttl, fwd := send("udp", ip, MinPathMTU-28); ttl != 64 || fwd != 0 {
			t.Errorf("UDP of MinPathMTU bytes: TTL %d and %d forwarded, want 64 and 0 (the fast path)", ttl, fwd)
		}
		if ttl, fwd := send("udp", ip, MinPathMTU-27); ttl != 63 || fwd != 1 {
			t.Errorf("UDP of MinPathMTU+1 bytes: TTL %d and %d forwarded, want 63 and 1 (the stack, for path MTU discovery)", ttl, fwd)
		}
		if ttl, fwd := send("udp", spoof, 14); ttl != 63 || fwd != 1 {
			t.Errorf("UDP from another address: TTL %d and %d forwarded, want 63 and 1 (the stack, where the guard judges it)", ttl, fwd)
		}
		if ttl, fwd := send("tcp", ip, 0); ttl != 63 || fwd < 1 {
			t.Errorf("TCP SYN: TTL %d and %d forwarded, want 63 and at least 1 (the stack, for the MSS clamp)", ttl, fwd)
		}
		if err := fp.Sync(nil); err != nil {
			t.Fatal(err)
		}
		if v := fp.Veths(); len(v) != 0 {
			t.Fatalf("fast path still serves %v after Sync(nil)", v)
		}
		if ttl, fwd := send("udp", ip, 14); ttl != 63 || fwd != 1 {
			t.Errorf("UDP after the binding went: TTL %d and %d forwarded, want 63 and 1 (the stack)", ttl, fwd)
		}
		return nil
	})
}
