package lease

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestPool(t *testing.T) {
	p := Pool{Overlay: netip.MustParsePrefix("10.255.0.0/16"), Bits: 24}
	for i, want := range map[int]string{0: "10.255.0.0/24", 1: "10.255.1.0/24", 255: "10.255.255.0/24"} {
		if got := p.At(i).String(); got != want {
			t.Errorf("At(%d) = %s, want %s", i, got, want)
		}
	}
	if p.Len() != 256 || p.Valid(p.At(0)) || !p.Valid(p.At(1)) ||
		p.Valid(netip.MustParsePrefix("10.254.1.0/24")) || p.Valid(netip.MustParsePrefix("10.255.1.0/25")) {
		t.Error("Valid wrong")
	}
	p = Pool{Overlay: netip.MustParsePrefix("fd00:1::/48"), Bits: 64}
	if got := p.At(3).String(); got != "fd00:1:0:3::/64" {
		t.Errorf("IPv6 At(3) = %s", got)
	}
	p.Bits = 56
	if got := p.At(2).String(); got != "fd00:1:0:200::/56" {
		t.Errorf("IPv6 /56 At(2) = %s", got)
	}
}

func TestPreferredIndexSpreads(t *testing.T) {
	const pool = 255
	hits := map[int]int{}
	for i := range 1000 {
		idx := PreferredIndex(fmt.Sprintf("cell-%d", i), 0, pool)
		if idx < 1 || idx > pool {
			t.Fatalf("index %d outside 1..%d", idx, pool)
		}
		hits[idx]++
	}
	// 1000 names into 255 slots: a uniform hash fills nearly all of them.
	if len(hits) < 230 {
		t.Fatalf("1000 names hit only %d of %d indexes", len(hits), pool)
	}
	if PreferredIndex("cell-7", 1, pool) == PreferredIndex("cell-7", 0, pool) &&
		PreferredIndex("cell-7", 2, pool) == PreferredIndex("cell-7", 0, pool) {
		t.Fatal("lost picks do not move the preferred index")
	}
}

func TestSettleTime(t *testing.T) {
	for alive, want := range map[int]time.Duration{
		2: 300 * time.Millisecond, 4: 300 * time.Millisecond, 5: 400 * time.Millisecond,
		16: 400 * time.Millisecond, 17: 500 * time.Millisecond, 51: 500 * time.Millisecond,
		65: 600 * time.Millisecond, 201: 600 * time.Millisecond, 257: 700 * time.Millisecond,
	} {
		if got := SettleTime(100*time.Millisecond, alive); got != want {
			t.Errorf("SettleTime(100ms, %d) = %v, want %v", alive, got, want)
		}
	}
}

// TestClaims: of the claims of one subnet the older lease wins (a
// takeover beats the lease it replaced, ties go to the smaller name); a
// subnet is free when nobody claims it; only a subnet whose claimants are
// all dead may be taken over, the longest-dead first.
func TestClaims(t *testing.T) {
	p := Pool{Overlay: netip.MustParsePrefix("10.255.0.0/16"), Bits: 24}
	t0 := time.Unix(1_800_000_000, 0)
	cs := make(Claims)
	cs.Add(p.At(1), Claim{Node: "b", Time: 20})
	cs.Add(p.At(1), Claim{Node: "a", Time: 20})
	cs.Add(p.At(1), Claim{Node: "c", Time: 30, Takeover: 20})
	cs.Add(p.At(2), Claim{Node: "d", Time: 5, Dead: t0.Add(time.Hour)})
	cs.Add(p.At(3), Claim{Node: "e", Time: 5, Dead: t0})
	cs.Add(p.At(3), Claim{Node: "f", Time: 6, Dead: t0.Add(time.Minute)})
	if w := cs[p.At(1)].Win; w.Node != "c" || cs[p.At(1)].AllDead {
		t.Errorf("subnet 1 won by %+v, all dead %v; want the takeover, alive", w, cs[p.At(1)].AllDead)
	}
	if !Older(Claim{Node: "a", Time: 20}, Claim{Node: "b", Time: 20}) || Older(Claim{Node: "a", Time: 21}, Claim{Node: "b", Time: 20}) {
		t.Error("Older: tie or age wrong")
	}
	if got := p.FirstFree(2, cs); got != p.At(4) {
		t.Errorf("FirstFree from 2: %v, want %v", got, p.At(4))
	}
	if got := p.FirstFree(255, cs); got != p.At(255) {
		t.Errorf("FirstFree from 255: %v", got)
	}
	best, sc, ok := cs.LongestDead()
	if !ok || best != p.At(3) || sc.Win.Node != "e" || !sc.DeadSince.Equal(t0.Add(time.Minute)) {
		t.Errorf("LongestDead = %v %+v %v; want subnet 3, won by e, dead since the last died", best, sc, ok)
	}
	full := make(Claims)
	for i := 1; i < p.Len(); i++ {
		full.Add(p.At(i), Claim{Node: fmt.Sprint(i), Time: 1})
	}
	if got := p.FirstFree(7, full); got.IsValid() {
		t.Errorf("FirstFree of a full pool: %v", got)
	}
	if _, _, ok := full.LongestDead(); ok {
		t.Error("LongestDead among live claims")
	}
}
