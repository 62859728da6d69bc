package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"time"

	"testing"

	"github.com/weft-net/weft/internal/lab"
)

// TestGuardDropsByVeth: the guard counts each drop under the container's
// veth and the reason (set drops), beside its named counters: a spoofed
// source, a packet to the cell, one to outside the overlay without an
// egress rule. Another veth's drops stay apart.
func TestGuardDropsByVeth(t *testing.T) {
	l := newEgressLab(t)
	if out, err := exec.Command("ip", "-n", l.ctr, "addr", "add", "10.255.1.9/32", "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("spoofed address: %v: %s", err, out)
	}
	if err := lab.InNetns(l.cell, func() error {
		g := newGuard("weftg0", netip.MustParseAddr("169.254.0.2"), 51820, netip.MustParsePrefix("10.255.0.0/16"))
		if err := g.install(); err != nil {
			return err
		}
		if _, err := g.Sync([]GuardEntry{{Veth: l.veth, IP: netip.MustParseAddr("10.255.1.2")}}); err != nil {
			return err
		}
		before, err := g.DropsByVeth()
		if err != nil {
			return err
		}
		for _, e := range before {
			if e.Reason != GuardNotIPv4 { // the container's IPv6 neighbour discovery
				return fmt.Errorf("before any drop: %v", before)
			}
		}
		dial := func(src, dst string) {
			lab.InNetns(l.ctr, func() error {
				d := net.Dialer{Timeout: 300 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
				if c, err := d.Dial("tcp4", dst); err == nil {
					c.Close()
				}
				return nil
			})
		}
		dial("10.255.1.9", "10.255.2.2:80") // spoofed
		dial("10.255.1.2", "10.255.1.1:22") // the cell
		dial("10.255.1.2", "198.18.0.2:80") // outside, no egress rule
		d, err := g.DropsByVeth()
		if err != nil {
			return err
		}
		got := map[string]uint64{}
		for _, e := range d {
			if e.Veth != l.veth {
				return fmt.Errorf("drop under veth %q, want only %s: %v", e.Veth, l.veth, d)
			}
			got[e.Reason] += e.Packets
		}
		cnt, _ := g.Counters()
		for reason, total := range map[string]uint64{GuardSpoofed: cnt.Spoofed, GuardToCell: cnt.ToCell, GuardEgress: cnt.Egress} {
			if got[reason] == 0 || got[reason] != total {
				return fmt.Errorf("%s: %d under the veth, %d in the named counter; want equal and > 0 (%v)", reason, got[reason], total, d)
			}
		}
		delete(got, GuardNotIPv4)
		if len(got) != 3 {
			return errors.New(fmt.Sprint("reasons ", got, ", want spoofed, to_cell, egress"))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
