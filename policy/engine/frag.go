package engine

import (
	"encoding/binary"
	"github.com/weft-net/weft/policy"
	"sync"
	"time"
)

// fragCache remembers the first fragments the engine allowed, so that the
// later fragments of the same datagram (which carry no ports) can follow
// them. Outbound and Inbound remember every first fragment they accept,
// whether it opened its flow or belongs to a tracked one (the lock-free
// or the locked lookup). It is a fixed array of slots indexed by a seeded hash of
// (src, dst, protocol, identification): it never grows, and a collision
// just forgets an older datagram, whose remaining fragments are then
// dropped (DropFragment). Fragments are rare on the overlay, whose MTU
// leaves room for the encapsulation. A non-first fragment that arrives
// before its first fragment is dropped as well.
type fragCache struct {
	seed   uint64
	shards [fragShards]fragShard
}

const (
	fragShards  = 16
	fragSlots   = 64 // per shard
	fragTimeout = int64(10 * time.Second)
)

type fragShard struct {
	mu    sync.Mutex
	slots [fragSlots]fragSlot // guarded by mu
}

type fragKey struct {
	src, dst [16]byte
	id       uint32
	proto    policy.Protocol
	_        [3]byte
}

type fragSlot struct {
	key  fragKey
	seen int64
	used bool
}

func newFragKey(p *packet) fragKey {
	return fragKey{src: p.src, dst: p.dst, id: p.fragID, proto: p.proto}
}

func (c *fragCache) slot(k *fragKey) (*fragShard, *fragSlot) {
	h := c.seed
	h = mix(h ^ binary.LittleEndian.Uint64(k.src[8:]))
	h = mix(h ^ binary.LittleEndian.Uint64(k.dst[8:]))
	h = mix(h ^ uint64(k.id)<<8 ^ uint64(k.proto))
	sh := &c.shards[h>>32%fragShards]
	return sh, &sh.slots[h>>40%fragSlots]
}

// remember records that the first fragment p was allowed.
func (c *fragCache) remember(p *packet, now int64) {
	k := newFragKey(p)
	sh, s := c.slot(&k)
	sh.mu.Lock()
	s.key, s.seen, s.used = k, now, true
	sh.mu.Unlock()
}

// follows reports whether the non-first fragment p belongs to a datagram
// whose first fragment was allowed recently.
func (c *fragCache) follows(p *packet, now int64) bool {
	k := newFragKey(p)
	sh, s := c.slot(&k)
	sh.mu.Lock()
	ok := s.used && s.key == k && now-s.seen <= fragTimeout
	if ok {
		s.seen = now
	}
	sh.mu.Unlock()
	return ok
}
