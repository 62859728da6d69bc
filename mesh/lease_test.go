package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/mesh/lease"
	"github.com/weft-net/weft/mesh/store"
)

// sameSubnetNames returns n node names whose preferred subnet index in a
// pool of the given size is the same (and not 1, the first cell's).
func sameSubnetNames(t *testing.T, n, pool int) []string {
	t.Helper()
	byIndex := map[int][]string{}
	for i := 0; i < 100000; i++ {
		name := fmt.Sprintf("cell-%d", i)
		idx := lease.PreferredIndex(name, 0, pool)
		if idx == 1 {
			continue
		}
		byIndex[idx] = append(byIndex[idx], name)
		if len(byIndex[idx]) == n {
			return byIndex[idx]
		}
	}
	t.Fatalf("no %d names share a preferred index", n)
	return nil
}

// nameWithIndex returns a node name whose preferred index is idx.
func nameWithIndex(t *testing.T, idx, pool int) string {
	t.Helper()
	for i := 0; i < 100000; i++ {
		if name := fmt.Sprintf("cell-%d", i); lease.PreferredIndex(name, 0, pool) == idx {
			return name
		}
	}
	t.Fatalf("no name hashes to index %d of %d", idx, pool)
	return ""
}

// TestSettleTime: LeaseSettle, if set, replaces the gossip wait
// (lease.SettleTime).
func TestSettleTime(t *testing.T) {
	m := &Mesh{cfg: DefaultConfig()}
	if got, want := m.settleTime(17), lease.SettleTime(m.cfg.GossipInterval, 17); got != want || got != 500*time.Millisecond {
		t.Errorf("settleTime(17) = %v, want %v", got, want)
	}
	m.cfg.LeaseSettle = 2 * time.Second
	if got := m.settleTime(50); got != 2*time.Second {
		t.Errorf("LeaseSettle set: settleTime = %v", got)
	}
}

// TestJoinerPicksHashedSubnet: the first cell takes index 1; a joiner
// starts from its preferred index and probes upward, wrapping past the end
// of the pool.
func TestJoinerPicksHashedSubnet(t *testing.T) {
	a := startNode(t, "cell-a", nodeOpts{})
	if got := a.Subnet(); got != a.pool().At(1) {
		t.Fatalf("first cell has %v, want %v", got, a.pool().At(1))
	}
	pool := a.pool().Len() - 1
	name := nameWithIndex(t, 77, pool)
	b := startNode(t, name, nodeOpts{join: a.joinAddr()})
	if p := waitLease(t, b); p != a.pool().At(77) {
		t.Fatalf("%s has %v, want its preferred %v", name, p, a.pool().At(77))
	}

	// 3 subnets: a holds 1, b holds 3 (persisted); a joiner preferring 3
	// finds 3 taken, wraps, finds 1 taken and takes 2.
	small := smallOverlay(24 * time.Hour)
	a2 := startNode(t, "small-a", nodeOpts{mutate: small})
	dirB := t.TempDir()
	writeLease(t, dirB, a2.pool().At(3).String(), time.Now().UnixNano())
	b2 := startNode(t, "small-b", nodeOpts{dir: dirB, join: a2.joinAddr(), mutate: small})
	waitMembers(t, []*Mesh{a2, b2}, 2)
	c2 := startNode(t, nameWithIndex(t, 3, 3), nodeOpts{join: a2.joinAddr(), mutate: small})
	if p := waitLease(t, c2); p != a2.pool().At(2) {
		t.Fatalf("joiner preferring index 3 took %v, want %v (a %v, b %v)", p, a2.pool().At(2), a2.Subnet(), b2.Subnet())
	}
}

// TestTentativeLeaseConfirmedByPushPull: a claim the seed has not heard of
// reaches a joiner through the push/pull that confirms its tentative lease.
// Cell m knows a lease record that cell a (the seed) does not (injected
// without gossip); the joiner's preferred subnet is that record's. The
// joiner must give the subnet up before its lease settles.
func TestTentativeLeaseConfirmedByPushPull(t *testing.T) {
	// No periodic push/pull: only the joiner's own ones move full state.
	quiet := func(c *Config) { c.PushPullInterval = time.Hour }
	a := startNode(t, "cell-a", nodeOpts{mutate: quiet})
	m := startNode(t, "cell-m", nodeOpts{join: a.joinAddr(), mutate: quiet})
	waitMembers(t, []*Mesh{a, m}, 2)
	pool := a.pool().Len() - 1
	name := nameWithIndex(t, 200, pool)
	ghost := store.LeaseRec{Node: "ghost", Subnet: a.pool().At(200), Time: 1, Seq: 1}
	m.mu.Lock()
	var res store.Result
	m.mergeLeaseLocked(ghost, false, &res) // not relayed: a never hears of it
	m.mu.Unlock()

	a.mu.Lock()
	_, aKnows := a.st.Lease("ghost")
	a.mu.Unlock()
	if aKnows {
		t.Fatal("cell-a has the ghost record before the joiner started")
	}
	j := startNode(t, name, nodeOpts{join: a.joinAddr(), mutate: quiet})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := j.WaitSubnet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p == ghost.Subnet {
		t.Fatalf("%s settled on %v, which ghost holds (known to cell-m only)", name, p)
	}
}

// TestConflictServesWinner: two cells with containers hold one subnet (a
// partition healed); both keep their records, and every cell's Endpoints
// serves only the record of the cell whose lease is older, whichever name
// sorts first.
func TestConflictServesWinner(t *testing.T) {
	ip := netip.MustParseAddr("10.255.5.7")
	for _, winnerFirst := range []bool{true, false} {
		dirA, dirB := t.TempDir(), t.TempDir()
		winner, tA, tB := "cell-a", int64(100), int64(200)
		if !winnerFirst {
			winner, tA, tB = "cell-b", 200, 100
		}
		writeLease(t, dirA, "10.255.5.0/24", tA)
		writeLease(t, dirB, "10.255.5.0/24", tB)
		a := startNode(t, "cell-a", nodeOpts{dir: dirA, logger: slog.New(newCapture())})
		b := startNode(t, "cell-b", nodeOpts{dir: dirB, logger: slog.New(newCapture())})
		for _, m := range []*Mesh{a, b} {
			if err := m.AddEndpoint(Endpoint{IP: ip, App: "x"}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := b.ml.Join(a.joinAddr()); err != nil {
			t.Fatal(err)
		}
		for _, m := range []*Mesh{a, b} {
			eventually(t, 5*time.Second, "winner's record served", func() error {
				if m.Subnet() != netip.MustParsePrefix("10.255.5.0/24") {
					return fmt.Errorf("a cell with containers renumbered to %v", m.Subnet())
				}
				eps := m.Endpoints()
				if len(eps) != 1 || eps[0].IP != ip || eps[0].Cell != winner {
					return fmt.Errorf("winner %s: Endpoints = %v", winner, eps)
				}
				return nil
			})
		}
	}
}

// TestConflictLoser: the loser of a conflict keeps its containers but
// reports the conflict, lists them in LocalEndpoints only, refuses new
// ones, and re-picks a free subnet once the last is removed.
func TestConflictLoser(t *testing.T) {
	contested := netip.MustParsePrefix("10.255.5.0/24")
	ip := netip.MustParseAddr("10.255.5.7")
	dirA, dirB := t.TempDir(), t.TempDir()
	writeLease(t, dirA, contested.String(), 100) // cell-a: older, wins
	writeLease(t, dirB, contested.String(), 200)
	a := startNode(t, "cell-a", nodeOpts{dir: dirA, logger: slog.New(newCapture())})
	b := startNode(t, "cell-b", nodeOpts{dir: dirB, logger: slog.New(newCapture())})
	for _, m := range []*Mesh{a, b} {
		if err := m.AddEndpoint(Endpoint{IP: ip, App: "x", Name: m.cfg.Name + "-c"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.ml.Join(a.joinAddr()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "cell-b sees the conflict", func() error {
		c, lost := b.Conflict()
		if !lost || c != (SubnetConflict{Subnet: contested, Holder: "cell-a"}) {
			return fmt.Errorf("Conflict = %v, %v", c, lost)
		}
		return nil
	})
	if c, lost := a.Conflict(); lost {
		t.Errorf("the winner reports a conflict: %v", c)
	}
	for _, n := range b.Members() {
		if n.Subnet == contested && n.Name != "cell-a" {
			t.Errorf("loser's Members report %s with the contested subnet", n.Name)
		}
	}
	if eps := b.LocalEndpoints(); len(eps) != 1 || eps[0].Cell != "cell-b" || eps[0].IP != ip {
		t.Errorf("loser's LocalEndpoints = %v, want its own container", eps)
	}
	if eps := a.LocalEndpoints(); len(eps) != 1 || eps[0].Cell != "cell-a" {
		t.Errorf("winner's LocalEndpoints = %v, want its own container", eps)
	}
	err := b.AddEndpoint(Endpoint{IP: netip.MustParseAddr("10.255.5.8"), App: "x", Name: "new"})
	if !errors.Is(err, ErrSubnetConflict) || !strings.Contains(err.Error(), "cell-a") {
		t.Errorf("AddEndpoint on the loser: %v, want ErrSubnetConflict naming cell-a", err)
	}
	if err := b.RemoveEndpoint(ip); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "cell-b re-picks", func() error {
		if s := b.Subnet(); !s.IsValid() || s == contested {
			return fmt.Errorf("Subnet = %v", s)
		}
		if c, lost := b.Conflict(); lost {
			return fmt.Errorf("still in conflict: %v", c)
		}
		return nil
	})
	if s := a.Subnet(); s != contested {
		t.Errorf("winner's subnet = %v, want %v", s, contested)
	}
}
