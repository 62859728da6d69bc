package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/policy"
)

// TestEgressLog: the egress chain logs a flow's first packet, refused or
// accepted, and EgressLog turns it into a record with the container's and
// the destination's address and port; later packets of an accepted flow
// are not logged.
func TestEgressLog(t *testing.T) {
	l := newEgressLab(t)
	l.echoServer(t, 8080)
	recs := make(chan EgressRecord, 64)
	stop := make(chan struct{})
	defer close(stop)
	ctr := netip.MustParseAddr("10.255.1.2")
	next := func(want bool) (EgressRecord, error) {
		select {
		case r := <-recs:
			if r.Accepted != want || r.Src.Addr() != ctr || r.Dst != netip.MustParseAddrPort("198.18.0.2:8080") || r.Protocol != policy.ProtoTCP {
				return r, fmt.Errorf("record %+v; want accepted %v from %v to 198.18.0.2:8080 tcp", r, want, ctr)
			}
			return r, nil
		case <-time.After(2 * time.Second):
			return EgressRecord{}, errors.New("no egress log record within 2 s")
		}
	}
	if err := lab.InNetns(l.cell, func() error {
		ov := netip.MustParsePrefix("10.255.0.0/16")
		g := newGuard("weftg0", netip.MustParseAddr("169.254.0.2"), 51820, ov)
		if err := g.install(); err != nil {
			return err
		}
		if _, err := g.Sync([]GuardEntry{{Veth: l.veth, IP: ctr}}); err != nil {
			return err
		}
		if err := EgressLog(func(r EgressRecord) { recs <- r }, stop); err != nil {
			return err
		}
		if c, err := l.dial(8080); err == nil {
			c.Close()
			return errors.New("container reached the internet without an egress rule")
		}
		if _, err := next(false); err != nil {
			return fmt.Errorf("refused: %w", err)
		}
		rule, _ := policy.ParseEgressRule("appA", "198.18.0.0/24", "tcp", "8080", ov)
		if err := g.SyncEgress([]policy.EgressRule{rule}, map[string][]netip.Addr{"appA": {ctr}}); err != nil {
			return err
		}
		for len(recs) > 0 { // SYN retransmissions of the refused dial
			<-recs
		}
		c, err := l.dial(8080)
		if err != nil {
			return err
		}
		defer c.Close()
		if r, err := next(true); err != nil {
			return fmt.Errorf("accepted: %w", err)
		} else if r.Src.Port() == 0 {
			return fmt.Errorf("accepted: record %+v has no source port", r)
		}
		for i := 0; i < 5; i++ {
			if !echo(c, "x") {
				return errors.New("no echo")
			}
		}
		if n := len(recs); n != 0 {
			return fmt.Errorf("%d records for packets of an established flow, want 0: %+v", n, <-recs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
