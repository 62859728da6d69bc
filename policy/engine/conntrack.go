package engine

import (
	"encoding/binary"
	"github.com/weft-net/weft/policy"
	"math"
	"math/bits"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"
)

// flowKey identifies a flow in both directions: the two endpoints are
// stored in canonical order (a <= b by address, then port) and the entry
// records which of them opened the flow. One lookup thus finds both the
// packet's own tuple and its reverse. It is the readable form of a
// [ctKey], used off the fast path (revalidation, ICMP errors).
type flowKey struct {
	a, b         [16]byte // v4-mapped for IPv4
	aport, bport uint16   // ICMP echo: the identifier on both sides
	proto        policy.Protocol
}

// ctKey is a flow key packed into words, with its keyed hash: two words
// for IPv4 (addresses; ports and protocol), five for IPv6. It is what the
// conntrack tables store and compare.
type ctKey struct {
	w  [5]uint64
	h  uint64
	v6 bool
}

// keyWords returns the number of key words of the table the key lives in.
func (k *ctKey) keyWords() int {
	if k.v6 {
		return 5
	}
	return 2
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

// setKey makes k the key of src:sport -> dst:dport (addresses v4-mapped
// unless v6) and reports whether src is side a.
func (ct *conntrack) setKey(k *ctKey, src, dst *[16]byte, sport, dport uint16, proto policy.Protocol, v6 bool) (srcIsA bool) {
	be := binary.BigEndian
	if !v6 {
		return ct.setKey4(k, be.Uint32(src[12:]), be.Uint32(dst[12:]), sport, dport, proto)
	}
	k.v6 = true
	srcIsA = lessEndpoint(src, sport, dst, dport)
	a, b, ap, bp := src, dst, sport, dport
	if !srcIsA {
		a, b, ap, bp = dst, src, dport, sport
	}
	k.w[0], k.w[1] = be.Uint64(a[:8]), be.Uint64(a[8:])
	k.w[2], k.w[3] = be.Uint64(b[:8]), be.Uint64(b[8:])
	k.w[4] = uint64(ap)<<48 | uint64(bp)<<32 | uint64(proto)
	h := mum(k.w[0]^ct.seed, k.w[1]^0xa0761d6478bd642f) ^ mum(k.w[2]^ct.seed, k.w[3]^0xe7037ed1a0b428db)
	k.h = fmix(mum(h^k.w[4], 0x8ebc6af09c88c6e3^ct.seed))
	return srcIsA
}

// setKey4 is setKey for IPv4 addresses s and d.
func (ct *conntrack) setKey4(k *ctKey, s, d uint32, sport, dport uint16, proto policy.Protocol) (srcIsA bool) {
	k.v6 = false
	srcIsA = s < d || s == d && sport <= dport
	if srcIsA {
		k.w[0] = uint64(s)<<32 | uint64(d)
		k.w[1] = uint64(sport)<<48 | uint64(dport)<<32 | uint64(proto)
	} else {
		k.w[0] = uint64(d)<<32 | uint64(s)
		k.w[1] = uint64(dport)<<48 | uint64(sport)<<32 | uint64(proto)
	}
	k.h = hash4(k.w[0]^ct.seed, k.w[1])
	return srcIsA
}

// hashWords recomputes the hash of a stored key (for rehashing).
func (ct *conntrack) hashWords(w []uint64, v6 bool) uint64 {
	if !v6 {
		return hash4(w[0]^ct.seed, w[1])
	}
	h := mum(w[0]^ct.seed, w[1]^0xa0761d6478bd642f) ^ mum(w[2]^ct.seed, w[3]^0xe7037ed1a0b428db)
	return fmix(mum(h^w[4], 0x8ebc6af09c88c6e3^ct.seed))
}

// flowKey unpacks k.
func (k *ctKey) flowKey() flowKey {
	var f flowKey
	be := binary.BigEndian
	pw := k.w[1]
	if k.v6 {
		be.PutUint64(f.a[:8], k.w[0])
		be.PutUint64(f.a[8:], k.w[1])
		be.PutUint64(f.b[:8], k.w[2])
		be.PutUint64(f.b[8:], k.w[3])
		pw = k.w[4]
	} else {
		var a4, b4 [4]byte
		be.PutUint32(a4[:], uint32(k.w[0]>>32))
		be.PutUint32(b4[:], uint32(k.w[0]))
		v4mapped(&f.a, a4[:])
		v4mapped(&f.b, b4[:])
	}
	f.aport, f.bport, f.proto = uint16(pw>>48), uint16(pw>>32), policy.Protocol(pw)
	return f
}

// Entry flags.
const (
	flOrigA    uint8 = 1 << iota // the flow was opened by side a
	flPolicy                     // opened inbound under a rule: re-checked when the table changes
	flClosing                    // tcp FIN or RST seen: short timeout
	flALocal                     // side a is a local endpoint (as of gen)
	flBLocal                     // side b is a local endpoint (as of gen)
	flRevoked                    // cut by a table change: a tombstone that answers DropRevoked
	flAnswered                   // tcp: the side that did not open the flow sent a packet
)

// flowEntry is the state of one tracked flow. A slot keeps the flags in
// its last key word (bits 8-15, above the protocol, with slotUsed) and the
// generation and last-seen time in its state word (state).
type flowEntry struct {
	lastSeen uint32 // clock time, in units of 2^seenShift ns (stamp)
	gen      uint32 // table generation at which the flags were verified
	flags    uint8
}

// seenShift: last-seen times are kept in 32 bits, in units of 2^24 ns
// (16.8 ms, a third of the coarse clock's tick), and compared modulo 2^32
// (age): an age is right up to 2^31 units (1.14 years), which bounds the
// timeouts (timeoutUnits). An entry is removed long before: by a lookup,
// a full shard's sweep or ExpireFlows, once its timeout has passed.
const seenShift = 24

// stamp is the clock time now (ns) in last-seen units.
func stamp(now int64) uint32 { return uint32(now >> seenShift) }

// age is the time from last seen s to now, in last-seen units; 0 if s is
// later (a packet judged on another core may have stored a later time).
func age(now, s uint32) int32 { return max(0, int32(now-s)) }

// timeoutUnits converts a timeout (ns) to last-seen units, at most 2^30.
func timeoutUnits(d int64) int32 { return int32(min(d>>seenShift, 1<<30)) }

const (
	slotUsed  = 1 << 16   // set in the last key word of every full slot: a zero word is an empty slot
	slotFlags = 0xff << 8 // the entry's flags in the last key word
)

func (e flowEntry) state() uint64 { return uint64(e.gen)<<32 | uint64(e.lastSeen) }

// entryOf unpacks the entry of a slot from its last key word and state.
func entryOf(last, state uint64) flowEntry {
	return flowEntry{lastSeen: uint32(state), gen: uint32(state >> 32), flags: uint8(last >> 8)}
}

func sideFlag(isA bool) uint8 {
	if isA {
		return flALocal
	}
	return flBLocal
}

// local reports whether side a (isA) or b of the flow is a local endpoint.
func (e flowEntry) local(isA bool) bool { return e.flags&sideFlag(isA) != 0 }

// conntrack is a bounded flow table split into shards chosen by the low
// bits of a seeded hash of the key. Each shard holds two open-addressing
// tables of pointer-free words (linear probing, backward-shift deletion,
// no tombstones), one for IPv4 keys and one for IPv6, of 128-byte buckets
// (ctTable). The hash's high bits pick the key's home bucket, whose first
// slot its probe starts at: a lookup mostly reads that bucket and no
// other, and a new flow goes into the empty slot that ended its lookup's
// probe, in the bucket the lookup has just brought into cache. A slot is
// empty when its last key word is zero.
//
// The shard limits add up to MaxFlows and a table's capacity never exceeds
// 8/5 of its shard's limit (and a bucket), so memory is bounded by
// MaxFlows: at most 41 bytes per IPv4 flow and 102 per IPv6 flow (25.6 and
// 64 B a slot at 5/8 load) in a full table. Tables start at 4 buckets and
// double when 4/5 full (5/8 for one that may fill up); they never shrink.
//
// Concurrency: a shard's sequence counter is its writers' lock: a writer
// makes it odd with a compare-and-swap from an even value, changes the
// shard, and makes it even again (lock, unlock); the fields marked
// "guarded by the lock" change only so.
// Readers take no lock: they load the counter, the words (atomic loads),
// and the counter again (a seqlock), and one that sees it odd or changed
// takes the lock and looks again. A reader refreshes the last-seen time
// with a compare-and-swap of the state word, at most once per last-seen
// unit (16.8 ms). A reader that
// found its flow absent keeps where (ctMiss): if the counter, once it
// holds the lock, is one more than the reader saw (no writer between), the
// flow is still absent and the slot still empty, and it goes there without
// a second probe (unchangedLocked).
//
// A full shard first drops its expired entries (at most once a second) and
// otherwise evicts the least recently seen of a few sampled entries, so it
// never grows past its limit.
type conntrack struct {
	shards    []ctShard
	mask      uint64
	seed      uint64
	timeouts  [5]int32 // by timeout class, in last-seen units
	evictions atomic.Uint64
}

// ctShard is one cache line (TestShardLayout): shards share no line.
type ctShard struct {
	seq       atomic.Uint32 // odd while a writer holds the shard; see conntrack
	n         int32         // entries in t4 and t6; guarded by the lock
	t4, t6    atomic.Pointer[ctTable]
	limit     int32  // n stays at most limit
	maxCap    int    // capacity bound of each table (slots)
	lastSweep int64  // guarded by the lock
	rnd       uint64 // eviction sampling state; guarded by the lock
	opened    uint64 // accepted packets that opened a flow (Engine.Counters); guarded by the lock
}

// lock takes the shard for a writer: it makes the sequence counter odd,
// spinning while another writer holds it, and yielding after a while (a
// sweep or a table's growth holds it for microseconds). A sync.Mutex in
// front of the counter, as before, adds two locked instructions (Lock and
// Unlock: 12 ns in a loop on the 2-core test VM).
func (sh *ctShard) lock() {
	for spins := 0; ; spins++ {
		if s := sh.seq.Load(); s&1 == 0 && sh.seq.CompareAndSwap(s, s+1) {
			return
		}
		if spins >= 64 {
			runtime.Gosched()
		}
	}
}

// unlock releases a shard taken with lock.
func (sh *ctShard) unlock() { sh.seq.Add(1) }

// ctMiss is where a lock-free lookup found its key absent: the table it
// probed (nil: none, or no lookup), the word offset of the empty slot that
// ended the probe, and the shard's sequence counter as it read it.
type ctMiss struct {
	t    *ctTable
	base int
	seq  uint32
}

// unchangedLocked reports whether nothing in the shard changed between
// the lock-free miss m and the caller's lock, which it must call right
// after lock: the key is then still absent and m's slot still empty.
// Otherwise it clears m.
func (sh *ctShard) unchangedLocked(m *ctMiss) bool {
	if m.t != nil && sh.seq.Load() == m.seq+1 {
		return true
	}
	*m = ctMiss{}
	return false
}

// ctTable is one open-addressing table of buckets of 16 words (128
// bytes, two cache lines, the first on a 128-byte boundary): 5 IPv4 slots
// of 3 words (2 key words, state) or 2 IPv6 slots of 6 (5 key words,
// state), and padding. Slot i is slot i%per of bucket i/per. A key's home
// is the first slot of the bucket its hash picks, and its probe goes on
// slot by slot, bucket after bucket, round the table. Only the lock holder
// changes a table and its n (lock-free readers store state words, with a
// compare-and-swap); a new table, made by growLocked, replaces it.
type ctTable struct {
	// What find reads, in the first 64 bytes.
	w       []uint64
	buckets uint64
	per     uint64 // slots a bucket: 5 or 2
	kw      int    // key words: 2 or 5
	stride  int    // words a slot: kw+1
	used    int    // words of a bucket that hold slots: per*stride

	v6     bool
	cap    uint64 // slots: buckets*per
	n      int    // entries; guarded by the shard's lock
	growAt int    // n at which an insert first doubles the table
}

const (
	maxShards     = 256
	bucketWords   = 16
	evictSamples  = 8
	sweepInterval = int64(time.Second)
	// A table starts with 4 buckets: 128 IPv4 buckets (640 slots, 16 KiB)
	// then hold 512 flows, a shard's share of 128k.
	minBuckets = 4
	// A growing table is at most 4/5 full: it doubles then, a probe
	// mostly ending in its home bucket. A table that may fill up (one
	// whose 4/5 is the shard's limit or more) is at most 5/8 full, up to
	// 8/5 of the limit: the probes of a full table (a SYN flood) end
	// sooner, and deletions shift fewer slots back.
	growNum, growDen = 4, 5
	fullNum, fullDen = 5, 8
)

const (
	toTCP = iota
	toTCPClosing
	toUDP
	toICMP
	toTCPUnanswered
)

func newConntrack(cfg *Config, seed uint64) *conntrack {
	n := 1
	for n < maxShards && n*2 <= cfg.MaxFlows {
		n *= 2
	}
	ct := &conntrack{shards: make([]ctShard, n), mask: uint64(n - 1), seed: seed | 1}
	for i := range ct.shards {
		sh := &ct.shards[i]
		limit := cfg.MaxFlows / n
		if i < cfg.MaxFlows%n {
			limit++
		}
		sh.setLimit(limit)
		sh.rnd = mix(seed ^ uint64(i+1))
	}
	for c, d := range [5]time.Duration{
		toTCP: cfg.TCPTimeout, toTCPClosing: cfg.TCPClosing, toUDP: cfg.UDPTimeout, toICMP: cfg.ICMPTimeout,
		toTCPUnanswered: min(cfg.TCPUnanswered, cfg.TCPTimeout),
	} {
		ct.timeouts[c] = timeoutUnits(int64(d))
	}
	return ct
}

// setLimit bounds the shard to limit entries, and so its tables to 8/5 of
// that and one slot more (maxCap), so that a table at its bound always
// has an empty slot.
func (sh *ctShard) setLimit(limit int) {
	sh.limit = int32(limit)
	sh.maxCap = limit*fullDen/fullNum + 1
}

// newCTTable returns an empty table of the given number of buckets, for a
// shard of the given limit and maxCap: it grows at 4/5 full, or at 5/8 if
// 4/5 is the limit or more, unless it holds maxCap slots or more.
func newCTTable(v6 bool, buckets uint64, limit, maxCap int) *ctTable {
	t := &ctTable{v6: v6, kw: 2, per: 5, buckets: buckets, growAt: math.MaxInt}
	if v6 {
		t.kw, t.per = 5, 2
	}
	t.stride = t.kw + 1
	t.used = int(t.per) * t.stride
	t.cap = buckets * t.per
	if int(t.cap) < maxCap {
		if t.growAt = int(t.cap) * growNum / growDen; t.growAt >= limit {
			t.growAt = int(t.cap) * fullNum / fullDen
		}
	}
	n := int(buckets) * bucketWords
	w := make([]uint64, n+bucketWords-1)
	off := int(-uintptr(unsafe.Pointer(&w[0])) % (8 * bucketWords) / 8) // the address only: the GC does not move heap objects
	t.w = w[off : off+n : off+n]
	return t
}

func mix(h uint64) uint64 {
	h *= 0x9e3779b97f4a7c15
	return h ^ h>>29
}

// fmix is murmur3's 64-bit finalizer: every input bit affects every output
// bit, so the shard (low bits) and the slot (high bits) are independent
// even for keys that differ in one port only.
func fmix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	return h ^ h>>33
}

// hash4 hashes a (seeded) IPv4 key: one wyhash mum step, then one
// multiply-xorshift so that the low bits (the shard) depend on every key
// bit as the high bits (the slot) do. Its latency is about half of
// fmix(mum(...)) on the fast path's critical chain.
func hash4(w0, w1 uint64) uint64 {
	h := mum(w0, w1^0xa0761d6478bd642f) * 0x9e3779b97f4a7c15
	return h ^ h>>32
}

// mum is the 128-bit multiply-and-fold step of wyhash.
func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// shard picks the shard of k by its keyed hash (low bits; lines use the
// high bits), so that a sender cannot aim its flows at someone else's
// shard.
func (ct *conntrack) shard(k *ctKey) *ctShard { return &ct.shards[k.h&ct.mask] }

func (sh *ctShard) table(v6 bool) *ctTable {
	if v6 {
		return sh.t6.Load()
	}
	return sh.t4.Load()
}

// home is the bucket of hash h, whose first slot is the first probed.
func (t *ctTable) home(h uint64) uint64 {
	hi, _ := bits.Mul64(h, t.buckets)
	return hi
}

// off returns the word offset of slot i.
func (t *ctTable) off(i uint64) int {
	return int(i/t.per)*bucketWords + int(i%t.per)*t.stride
}

// slotAt returns the slot at word offset base.
func (t *ctTable) slotAt(base int) uint64 {
	return uint64(base/bucketWords)*t.per + uint64(base%bucketWords/t.stride)
}

// find probes for k. It returns the word offset of k's slot and its last
// key word (flags) if found, or the offset of the empty slot that ends the
// probe. It is the one lookup, under the lock and lock-free (the sequence
// counter validates the result): the probe is bounded so that a reader
// racing a writer cannot loop forever, and then returns -1.
func (t *ctTable) find(k *ctKey) (base int, last uint64, found bool) {
	want := k.w[t.kw-1]
	b := t.home(k.h)
	for range t.buckets {
		o := int(b) * bucketWords
		s := t.w[o : o+bucketWords : o+bucketWords]
		for j := 0; j < t.used; j += t.stride {
			if last = atomic.LoadUint64(&s[j+t.kw-1]); last == 0 {
				return o + j, 0, false
			}
			if last&^(slotUsed|slotFlags) == want && atomic.LoadUint64(&s[j]) == k.w[0] && (t.kw == 2 || eq6(s[j:j+4], k)) {
				return o + j, last, true
			}
		}
		if b++; b == t.buckets {
			b = 0
		}
	}
	return -1, 0, false
}

// eq6 compares key words 1-3 of an IPv6 slot s with k's.
func eq6(s []uint64, k *ctKey) bool {
	return atomic.LoadUint64(&s[1]) == k.w[1] && atomic.LoadUint64(&s[2]) == k.w[2] && atomic.LoadUint64(&s[3]) == k.w[3]
}

// word loads one word. Lock-free readers may store state words at any
// time, so even the lock holder reads atomically (a plain MOV on amd64).
func (t *ctTable) word(i int) uint64 { return atomic.LoadUint64(&t.w[i]) }

// keyOf returns the key stored at base, with its hash.
func (t *ctTable) keyOf(ct *conntrack, base int) ctKey {
	k := ctKey{v6: t.v6}
	for j := range t.kw {
		k.w[j] = t.word(base + j)
	}
	k.w[t.kw-1] &^= slotUsed | slotFlags
	k.h = ct.hashWords(k.w[:t.kw], t.v6)
	return k
}

// entry returns the entry in the slot at base.
func (t *ctTable) entry(base int) flowEntry {
	return entryOf(t.word(base+t.kw-1), t.word(base+t.kw))
}

// setEntryLocked updates the entry in the full slot at base in place.
func (t *ctTable) setEntryLocked(base int, e flowEntry) {
	storeWord(&t.w[base+t.kw], e.state())
	last := t.word(base+t.kw-1)&^slotFlags | uint64(e.flags)<<8
	storeWord(&t.w[base+t.kw-1], last)
}

// fillLocked writes key and entry into the empty slot at base, the last
// key word (which marks the slot full) last.
func (t *ctTable) fillLocked(base int, k *ctKey, e flowEntry) {
	for j := range t.kw - 1 {
		storeWord(&t.w[base+j], k.w[j])
	}
	storeWord(&t.w[base+t.kw], e.state())
	storeWord(&t.w[base+t.kw-1], k.w[t.kw-1]|slotUsed|uint64(e.flags)<<8)
	t.n++
}

// timeout returns the idle timeout of an entry, in last-seen units.
func (ct *conntrack) timeout(proto policy.Protocol, flags uint8) int32 {
	if flags&flRevoked != 0 {
		return ct.timeouts[toTCPClosing]
	}
	switch proto {
	case policy.ProtoTCP:
		if flags&flClosing != 0 {
			return ct.timeouts[toTCPClosing]
		}
		if flags&flAnswered == 0 {
			return ct.timeouts[toTCPUnanswered] // a SYN flood does not hold the table for TCPTimeout
		}
		return ct.timeouts[toTCP]
	case policy.ProtoUDP:
		return ct.timeouts[toUDP]
	}
	return ct.timeouts[toICMP]
}

func (ct *conntrack) expired(proto policy.Protocol, e flowEntry, now int64) bool {
	return age(stamp(now), e.lastSeen) > ct.timeout(proto, e.flags)
}

// lookupLocked returns the live entry of k and its slot; an expired one is
// removed and reported absent.
func (ct *conntrack) lookupLocked(sh *ctShard, k *ctKey, now int64) (base int, e flowEntry, ok bool) {
	t := sh.table(k.v6)
	if t == nil {
		return -1, flowEntry{}, false
	}
	base, _, ok = t.find(k)
	if !ok {
		return -1, flowEntry{}, false
	}
	e = t.entry(base)
	if ct.expired(policy.Protocol(k.w[k.keyWords()-1]), e, now) {
		ct.deleteLocked(sh, t, base)
		return -1, flowEntry{}, false
	}
	return base, e, true
}

// updateLocked stores e in the slot of k found by lookupLocked.
func (ct *conntrack) updateLocked(sh *ctShard, k *ctKey, base int, e flowEntry) {
	sh.table(k.v6).setEntryLocked(base, e)
}

// removeLocked deletes the slot of k found by lookupLocked.
func (ct *conntrack) removeLocked(sh *ctShard, k *ctKey, base int) {
	ct.deleteLocked(sh, sh.table(k.v6), base)
}

// insertLocked inserts the entry of k, which the shard does not hold,
// making room first if the shard is at its limit and growing (or making)
// its table if that is full enough (growAt). m is where a lock-free lookup found k
// absent, with nothing changed since (unchangedLocked), or zero: then, or
// once room was made or the table grown, it probes for k's slot itself.
func (ct *conntrack) insertLocked(sh *ctShard, k *ctKey, e flowEntry, now int64, m ctMiss) {
	if sh.n >= sh.limit {
		ct.makeRoomLocked(sh, now)
		m.t = nil
	}
	t := sh.table(k.v6)
	if t == nil || t.n >= t.growAt {
		t = ct.growLocked(sh, t, k.v6)
	}
	base := m.base
	if m.t != t {
		base, _, _ = t.find(k)
	}
	t.fillLocked(base, k, e)
	sh.n++
}

// growLocked replaces t (nil: none yet) by a table of twice its buckets,
// up to the shard's bound, holding its entries, and returns it.
func (ct *conntrack) growLocked(sh *ctShard, t *ctTable, v6 bool) *ctTable {
	per := uint64(5)
	if v6 {
		per = 2
	}
	b := uint64(minBuckets)
	if t != nil {
		b = 2 * t.buckets
	}
	nt := newCTTable(v6, min(b, (uint64(sh.maxCap)+per-1)/per), int(sh.limit), sh.maxCap)
	if t != nil {
		for i := range t.cap {
			base := t.off(i)
			if t.word(base+t.kw-1) == 0 {
				continue
			}
			k := t.keyOf(ct, base)
			nb, _, _ := nt.find(&k)
			for j := range t.stride {
				nt.w[nb+j] = t.word(base + j) // nt is not published yet
			}
		}
		nt.n = t.n
	}
	if v6 {
		sh.t6.Store(nt)
	} else {
		sh.t4.Store(nt)
	}
	return nt
}

// deleteLocked empties the slot at base and shifts the following entries
// of its probe run back (no tombstones).
func (ct *conntrack) deleteLocked(sh *ctShard, t *ctTable, base int) {
	i := t.slotAt(base)
	j := i
	for {
		if j++; j == t.cap {
			j = 0
		}
		jb := t.off(j)
		if t.word(jb+t.kw-1) == 0 {
			break
		}
		// The entry at j may move to i if i lies cyclically in [home, j).
		k := t.keyOf(ct, jb)
		h := t.home(k.h) * t.per
		if (j-h+t.cap)%t.cap >= (j-i+t.cap)%t.cap {
			ib := t.off(i)
			for x := range t.stride {
				storeWord(&t.w[ib+x], t.word(jb+x))
			}
			i = j
		}
	}
	ib := t.off(i)
	for x := range t.stride {
		storeWord(&t.w[ib+x], 0)
	}
	t.n--
	sh.n--
}

// makeRoomLocked frees at least one entry of a full shard.
func (ct *conntrack) makeRoomLocked(sh *ctShard, now int64) {
	if now-sh.lastSweep >= sweepInterval {
		sh.lastSweep = now
		ct.sweepLocked(sh, now)
		if sh.n < sh.limit {
			return
		}
	}
	// Sample a few entries from a random slot on and evict the one seen
	// least recently (an approximate LRU).
	sh.rnd = mix(sh.rnd + 0x9e3779b97f4a7c15)
	t := sh.t4.Load()
	if t6 := sh.t6.Load(); t6 != nil && (t == nil || t6.n > 0 && sh.rnd&1 == 0 || t.n == 0) {
		t = t6
	}
	if t == nil || t.n == 0 {
		return
	}
	i := t.home(sh.rnd) * t.per
	victim, oldest, n := -1, int32(0), 0
	for range t.cap {
		base := t.off(i)
		if t.word(base+t.kw-1) != 0 {
			if a := age(stamp(now), t.entry(base).lastSeen); n == 0 || a > oldest {
				victim, oldest = base, a
			}
			if n++; n == evictSamples {
				break
			}
		}
		if i++; i == t.cap {
			i = 0
		}
	}
	if victim >= 0 {
		ct.deleteLocked(sh, t, victim)
		ct.evictions.Add(1)
	}
}

// sweepLocked removes the expired entries of the shard.
func (ct *conntrack) sweepLocked(sh *ctShard, now int64) int {
	n := 0
	for _, t := range []*ctTable{sh.t4.Load(), sh.t6.Load()} {
		if t == nil {
			continue
		}
		for i := uint64(0); i < t.cap; {
			base := t.off(i)
			last := t.word(base + t.kw - 1)
			if last != 0 && ct.expired(policy.Protocol(last), t.entry(base), now) {
				ct.deleteLocked(sh, t, base) // another entry may shift into this slot
				n++
				continue
			}
			i++
		}
	}
	return n
}

// expire removes every idle entry and returns how many it removed.
func (ct *conntrack) expire(now int64) int {
	n := 0
	for i := range ct.shards {
		sh := &ct.shards[i]
		sh.lock()
		n += ct.sweepLocked(sh, now)
		sh.unlock()
	}
	return n
}

func (ct *conntrack) len() int {
	n := 0
	for i := range ct.shards {
		sh := &ct.shards[i]
		sh.lock()
		n += int(sh.n)
		sh.unlock()
	}
	return n
}

// storeWord writes a conntrack word while holding the shard. Lock-free
// readers load words atomically and validate what they read with the
// sequence counter. The store is atomic in every build, so that the
// variant that ships is the one the race detector checks: a plain store
// racing with those loads is outside the Go memory model, whatever x86
// does with it.
func storeWord(p *uint64, v uint64) { atomic.StoreUint64(p, v) }
