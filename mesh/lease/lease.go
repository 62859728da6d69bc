// Package lease holds the rules of weft's subnet leases, apart from the
// membership that carries them: the pool of subnets an overlay is cut into
// (Pool), where a joining cell starts looking for a free one
// (PreferredIndex), which of several claims of one subnet wins (Older),
// the claims of each subnet (Claims) and which subnet is free or may be
// taken over (FirstFree, LongestDead), and how long a fresh claim waits
// for gossip (SettleTime).
//
// Package mesh runs a lease's life, which is bound to membership: it
// gathers the claims from the node metadata and the lease records of the
// store, announces its own in its metadata, settles a fresh one by gossip
// and push/pulls with live members, holds a dead member's lease, and
// defends its own (mesh/lease.go). Nothing here locks or keeps state.
package lease

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"time"
)

// Pool is an overlay cut into subnets of prefix length Bits; subnet 0 is
// reserved. Package mesh's Config validation bounds it (2 to 65536
// subnets).
type Pool struct {
	Overlay netip.Prefix
	Bits    int
}

// Len is the number of subnets, the reserved one included.
func (p Pool) Len() int { return 1 << (p.Bits - p.Overlay.Bits()) }

// At returns the i-th subnet of the overlay.
func (p Pool) At(i int) netip.Prefix {
	base := p.Overlay.Addr()
	b := base.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	shift := uint(base.BitLen() - p.Bits) // < 64 for IPv4; may exceed for IPv6
	v := uint64(i)
	switch {
	case shift >= 64:
		hi += v << (shift - 64)
	default:
		add := v << shift
		carry := uint64(0)
		if shift > 0 && v>>(64-shift) != 0 {
			carry = v >> (64 - shift)
		}
		nlo := lo + add
		if nlo < lo {
			carry++
		}
		lo, hi = nlo, hi+carry
	}
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	a := netip.AddrFrom16(b)
	if base.Is4() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, p.Bits)
}

// Valid reports whether s is a leasable subnet of the overlay.
func (p Pool) Valid(s netip.Prefix) bool {
	return s.IsValid() && s.Bits() == p.Bits && s.Masked() == s &&
		p.Overlay.Contains(s.Addr()) && s != p.At(0)
}

// FirstFree returns the first subnet no claim holds, from index start
// upward, wrapping past the end of the pool (index 0 is never taken); the
// zero prefix when there is none.
func (p Pool) FirstFree(start int, claims Claims) netip.Prefix {
	n := p.Len() - 1
	for k := 0; k < n; k++ {
		s := p.At(1 + (start-1+k)%n)
		if _, taken := claims[s]; !taken {
			return s
		}
	}
	return netip.Prefix{}
}

// PreferredIndex is where a joining cell starts looking for a free subnet
// in a pool of subnets 1..pool: FNV-1a of its name (and of the number of
// picks it lost) mod the pool. Two cells joining at the same moment thus
// almost never pick the same subnet; losers of one collision do not
// collide again.
func PreferredIndex(name string, lost, pool int) int {
	h := fnv.New64a()
	h.Write([]byte(name))
	if lost > 0 {
		fmt.Fprintf(h, "#%d", lost)
	}
	return 1 + int(h.Sum64()%uint64(pool))
}

// SettleTime is the gossip wait of a fresh lease among alive cells:
// gossip × (2 + ⌈log4 alive⌉). memberlist gossips each message to 3 random
// members per round, so a rumour reaches about 4^r cells after r rounds;
// two rounds more cover the tail and the wake-up delays.
func SettleTime(gossip time.Duration, alive int) time.Duration {
	rounds := 2
	for n := 1; n < alive; n *= 4 {
		rounds++
	}
	return gossip * time.Duration(rounds)
}

// Claim is a node's claim of a subnet.
type Claim struct {
	Node     string
	Time     int64     // lease time, unix ns
	Takeover int64     // lease time of a dead cell's lease this claim replaced
	Dead     time.Time // when its holder was last seen dead or left; zero: alive
}

// Older reports whether claim a beats claim b: a claim that took over b's
// lease beats it, else the older lease wins (tie: the smaller name).
func Older(a, b Claim) bool {
	switch {
	case a.Takeover != 0 && a.Takeover >= b.Time:
		return true
	case b.Takeover != 0 && b.Takeover >= a.Time:
		return false
	case a.Time != b.Time:
		return a.Time < b.Time
	}
	return a.Node < b.Node
}

// Subnet is what the claims of one subnet add up to.
type Subnet struct {
	Win       Claim     // the winning claim
	AllDead   bool      // every claimant is dead or left
	DeadSince time.Time // with AllDead: when the last of them died
}

// Claims are the claims of other nodes, by subnet.
type Claims map[netip.Prefix]Subnet

// Add adds claim c of subnet p.
func (cs Claims) Add(p netip.Prefix, c Claim) {
	have, ok := cs[p]
	if !ok {
		cs[p] = Subnet{Win: c, AllDead: !c.Dead.IsZero(), DeadSince: c.Dead}
		return
	}
	if Older(c, have.Win) {
		have.Win = c
	}
	have.AllDead = have.AllDead && !c.Dead.IsZero()
	if c.Dead.After(have.DeadSince) {
		have.DeadSince = c.Dead
	}
	cs[p] = have
}

// LongestDead returns the subnet whose claimants are all dead and have
// been the longest (ties: the lower address), for a takeover when no
// subnet is free; false if there is none.
func (cs Claims) LongestDead() (netip.Prefix, Subnet, bool) {
	var best netip.Prefix
	var bestDead time.Time
	for p, sc := range cs {
		if sc.AllDead && (!best.IsValid() || sc.DeadSince.Before(bestDead) ||
			(sc.DeadSince.Equal(bestDead) && p.Addr().Less(best.Addr()))) {
			best, bestDead = p, sc.DeadSince
		}
	}
	if !best.IsValid() {
		return netip.Prefix{}, Subnet{}, false
	}
	return best, cs[best], true
}
