package policy

import (
	"encoding/binary"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// flowKey identifies a flow in both directions: the two endpoints are
// stored in canonical order (a <= b by address, then port) and the entry
// records which of them opened the flow. One lookup thus finds both the
// packet's own tuple and its reverse. The key is pointer-free and has no
// padding, so the map hashes it as plain memory.
type flowKey struct {
	a, b         [16]byte // v4-mapped for IPv4
	aport, bport uint16   // ICMP echo: the identifier on both sides
	proto        Protocol
	zero         uint8 // explicit padding byte, always zero
}

// flowKeyOf returns the key of the flow src:sport -> dst:dport and whether
// src is side a of the key.
func flowKeyOf(src, dst *[16]byte, sport, dport uint16, proto Protocol) (k flowKey, srcIsA bool) {
	srcIsA = k.set(src, dst, sport, dport, proto)
	return k, srcIsA
}

// set makes k the key of src:sport -> dst:dport and reports whether src
// is side a. It fills k in place: cheaper than returning the struct.
func (k *flowKey) set(src, dst *[16]byte, sport, dport uint16, proto Protocol) (srcIsA bool) {
	srcIsA = lessEndpoint(src, sport, dst, dport)
	if srcIsA {
		k.a, k.b, k.aport, k.bport = *src, *dst, sport, dport
	} else {
		k.a, k.b, k.aport, k.bport = *dst, *src, dport, sport
	}
	k.proto, k.zero = proto, 0
	return srcIsA
}

func lessEndpoint(x *[16]byte, xp uint16, y *[16]byte, yp uint16) bool {
	be := binary.BigEndian
	if a, b := be.Uint64(x[:8]), be.Uint64(y[:8]); a != b {
		return a < b
	}
	if a, b := be.Uint64(x[8:]), be.Uint64(y[8:]); a != b {
		return a < b
	}
	return xp <= yp
}

// Entry flags.
const (
	flOrigA   uint8 = 1 << iota // the flow was opened by side a
	flPolicy                    // opened inbound under a rule: re-checked when the table changes
	flClosing                   // tcp FIN or RST seen: short timeout
	flALocal                    // side a is a local endpoint (as of gen)
	flBLocal                    // side b is a local endpoint (as of gen)
	flRevoked                   // cut by a table change: a tombstone that answers DropRevoked
)

// flowEntry is the state of one tracked flow. Pointer-free, so a full
// table costs the garbage collector nothing to scan.
type flowEntry struct {
	lastSeen int64  // clock nanoseconds
	gen      uint32 // table generation at which the flags were verified
	flags    uint8
}

func sideFlag(isA bool) uint8 {
	if isA {
		return flALocal
	}
	return flBLocal
}

// local reports whether side a (isA) or b of the flow is a local endpoint.
func (e flowEntry) local(isA bool) bool { return e.flags&sideFlag(isA) != 0 }

// conntrack is a bounded flow table split into shards, each a mutex and a
// map, chosen by a seeded hash of the key. The shard limits add up to
// MaxFlows; a full shard first drops its expired entries (at most once a
// second) and otherwise evicts the least recently seen of a few sampled
// entries, so it never grows past its limit.
type conntrack struct {
	shards    []ctShard
	mask      uint64
	seed      uint64
	timeouts  [4]int64 // by timeoutClass
	evictions atomic.Uint64
}

type ctShard struct {
	mu        sync.Mutex
	flows     map[flowKey]flowEntry // guarded by mu
	lastSweep int64                 // guarded by mu
	limit     int
	_         [64]byte // keep neighbouring shard locks off one cache line
}

const (
	maxShards     = 256
	evictSamples  = 8
	sweepInterval = int64(time.Second)
)

const (
	toTCP = iota
	toTCPClosing
	toUDP
	toICMP
)

func newConntrack(cfg *Config, seed uint64) *conntrack {
	n := 1
	for n < maxShards && n*2 <= cfg.MaxFlows {
		n *= 2
	}
	ct := &conntrack{shards: make([]ctShard, n), mask: uint64(n - 1), seed: seed}
	for i := range ct.shards {
		ct.shards[i].flows = make(map[flowKey]flowEntry)
		ct.shards[i].limit = cfg.MaxFlows / n
		if i < cfg.MaxFlows%n {
			ct.shards[i].limit++
		}
	}
	ct.timeouts = [4]int64{
		toTCP: int64(cfg.TCPTimeout), toTCPClosing: int64(cfg.TCPClosing),
		toUDP: int64(cfg.UDPTimeout), toICMP: int64(cfg.ICMPTimeout),
	}
	return ct
}

func mix(h uint64) uint64 {
	h *= 0x9e3779b97f4a7c15
	return h ^ h>>29
}

// mum is the 128-bit multiply-and-fold step of wyhash.
func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// shard picks the shard of k by a keyed hash, so that a sender cannot aim
// its flows at the shard of someone else's.
func (ct *conntrack) shard(k *flowKey) *ctShard {
	le := binary.LittleEndian
	h := mum(le.Uint64(k.a[:8])^ct.seed, le.Uint64(k.a[8:])^0xa0761d6478bd642f) ^
		mum(le.Uint64(k.b[:8])^ct.seed, le.Uint64(k.b[8:])^0xe7037ed1a0b428db)
	h = mum(h^uint64(k.aport)<<32^uint64(k.bport)<<16^uint64(k.proto), 0x8ebc6af09c88c6e3^ct.seed)
	return &ct.shards[h&ct.mask]
}

func (ct *conntrack) timeout(k *flowKey, e flowEntry) int64 {
	if e.flags&flRevoked != 0 {
		return ct.timeouts[toTCPClosing]
	}
	switch k.proto {
	case ProtoTCP:
		if e.flags&flClosing != 0 {
			return ct.timeouts[toTCPClosing]
		}
		return ct.timeouts[toTCP]
	case ProtoUDP:
		return ct.timeouts[toUDP]
	}
	return ct.timeouts[toICMP]
}

func (ct *conntrack) expired(k *flowKey, e flowEntry, now int64) bool {
	return now-e.lastSeen > ct.timeout(k, e)
}

// getLocked returns the live entry of k; an expired one is removed and
// reported absent.
func (ct *conntrack) getLocked(sh *ctShard, k *flowKey, now int64) (flowEntry, bool) {
	e, ok := sh.flows[*k]
	if ok && ct.expired(k, e, now) {
		delete(sh.flows, *k)
		return flowEntry{}, false
	}
	return e, ok
}

// putLocked inserts or replaces the entry of k, making room first if the
// shard is at its limit.
func (ct *conntrack) putLocked(sh *ctShard, k *flowKey, e flowEntry, now int64) {
	if _, ok := sh.flows[*k]; !ok && len(sh.flows) >= sh.limit {
		ct.makeRoomLocked(sh, now)
	}
	sh.flows[*k] = e
}

func (ct *conntrack) makeRoomLocked(sh *ctShard, now int64) {
	if now-sh.lastSweep >= sweepInterval {
		sh.lastSweep = now
		ct.sweepLocked(sh, now)
		if len(sh.flows) < sh.limit {
			return
		}
	}
	// Map iteration starts at a random slot: sample a few entries and
	// evict the one seen least recently (an approximate LRU).
	var victim flowKey
	oldest, n := int64(0), 0
	for k, e := range sh.flows {
		if n == 0 || e.lastSeen < oldest {
			victim, oldest = k, e.lastSeen
		}
		if n++; n == evictSamples {
			break
		}
	}
	if n > 0 {
		delete(sh.flows, victim)
		ct.evictions.Add(1)
	}
}

func (ct *conntrack) sweepLocked(sh *ctShard, now int64) int {
	n := 0
	for k, e := range sh.flows {
		if ct.expired(&k, e, now) {
			delete(sh.flows, k)
			n++
		}
	}
	return n
}

// expire removes every idle entry and returns how many it removed.
func (ct *conntrack) expire(now int64) int {
	n := 0
	for i := range ct.shards {
		sh := &ct.shards[i]
		sh.mu.Lock()
		n += ct.sweepLocked(sh, now)
		sh.mu.Unlock()
	}
	return n
}

func (ct *conntrack) len() int {
	n := 0
	for i := range ct.shards {
		sh := &ct.shards[i]
		sh.mu.Lock()
		n += len(sh.flows)
		sh.mu.Unlock()
	}
	return n
}
