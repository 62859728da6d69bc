package engine

import (
	"encoding/binary"
	"github.com/weft-net/weft/policy"
	"math/bits"
	"runtime"
	"sync"
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

// flowEntry is the state of one tracked flow, as stored in two words of a
// slot: meta (used bit, flags, generation) and lastSeen.
type flowEntry struct {
	lastSeen int64  // clock nanoseconds
	gen      uint32 // table generation at which the flags were verified
	flags    uint8
}

const metaUsed = 1 << 16 // a slot's meta word is zero when the slot is empty

func (e flowEntry) meta() uint64 { return uint64(e.gen)<<32 | metaUsed | uint64(e.flags) }

func entryOf(meta uint64, seen int64) flowEntry {
	return flowEntry{lastSeen: seen, gen: uint32(meta >> 32), flags: uint8(meta)}
}

func sideFlag(isA bool) uint8 {
	if isA {
		return flALocal
	}
	return flBLocal
}

// local reports whether side a (isA) or b of the flow is a local endpoint.
func (e flowEntry) local(isA bool) bool { return e.flags&sideFlag(isA) != 0 }

// conntrack is a bounded flow table split into shards chosen by a seeded
// hash of the key. Each shard holds two open-addressing tables (linear
// probing, backward-shift deletion) of pointer-free words: one for IPv4
// keys (4 words a slot: key, key, meta, lastSeen) and one for IPv6 (7
// words). The shard limits add up to MaxFlows and a table's capacity never
// exceeds 8/5 of its shard's limit, so memory is bounded by MaxFlows:
// at most 51 bytes per IPv4 flow (32 B a slot at 5/8 load).
//
// Concurrency: the shard's sequence counter is its writers' lock. A writer
// makes it odd with a compare-and-swap from an even value, changes the
// shard, and makes it even again (lock, unlock). Readers of the fast path
// take no lock: they read the words with atomic loads between two loads of
// the counter (seqlock), and a reader that sees it odd or changed falls
// back to the lock. A new IPv4 flow's packet, which found its flow absent
// at sequence s, takes the shard with a single compare-and-swap from s
// (tryLock): if that succeeds, nothing has changed since the miss, so the
// flow joins the nursery without a second look, and without the mutex.
// Every other writer first takes the shard's mutex (so that writers that
// may run long, a sweep or a table's growth, make the others sleep rather
// than spin), then the counter. A reader refreshes lastSeen with an
// atomic store, at most once per tick of the coarse clock.
//
// New IPv4 flows first go to the shard's nursery, a few cache-resident
// slots that lookups check after t4, each with its t4 slot reserved
// (nurseOpenLocked); when it is full, all of them move into their slots at
// once, when the shard's next new flow comes. The slots'
// cache lines are prefetched for writing when the nursery becomes full, so
// that by then they are in cache.
// A new flow's slot in t4 is a random cache line, mostly not in cache on a
// big table: written one at a time, each would stall the next locked
// instruction (the mutex) for a memory round trip; written in a batch, the
// round trips overlap. A key is never in both t4 and the nursery; a locked
// lookup that finds its key in the nursery moves the nursery into t4
// first, so everything else works on t4's slots only.
//
// A full shard first drops its expired entries (at most once a second) and
// otherwise evicts the least recently seen of a few sampled entries, so it
// never grows past its limit.
type conntrack struct {
	shards    []ctShard
	mask      uint64
	seed      uint64
	timeouts  [5]int64 // by timeout class
	evictions atomic.Uint64
}

type ctShard struct {
	// The first cache line holds all that a packet of a new IPv4 flow
	// touches besides its nursery entry and slot (nslot) and t4's control
	// byte (lock included): t4's control bytes, slots and capacity are repeated here
	// (view4) so that lock-free IPv4 readers do not load the table header.
	seq    atomic.Uint32          // odd while a writer holds the shard; see conntrack
	nurseN int32                  // entries in nurse; guarded by seq (readers use ntags)
	cap4   atomic.Uint64          // t4.cap, 0 without a t4; stored after tags4 and w4
	tags4  atomic.Pointer[uint64] // &t4.tags[0]
	w4     atomic.Pointer[uint64] // &t4.w[0]
	ntags  [2]uint64              // control bytes of the nurse entries, as in ctTable
	// opened counts the new flows fast4 opened, which it counts here,
	// holding the shard, with a plain add, instead of in the engine's
	// verdict counters (a locked add). Guarded by seq: Counters takes the
	// shard to read it.
	opened uint64
	n      int32 // entries in t4, t6 and nurse; guarded by seq
	limit  int32

	t4, t6    atomic.Pointer[ctTable]
	lastSweep int64      // guarded by seq
	rnd       uint64     // eviction sampling state; guarded by seq
	maxCap    int        // capacity bound of each table
	mu        sync.Mutex // orders the writers that take the shard with lock
	_         [16]byte   // the nursery on lines of its own; shards share no line (TestShardLayout)

	// nurse holds the newest IPv4 flows, not yet in t4: 4 words each (key,
	// key, meta, lastSeen). See conntrack.
	nurse [nurseryCap * 4]uint64
	// nslot is the t4 slot reserved for each nursery entry: its control
	// byte is set when the entry joins (while the flow's control-byte
	// word is in cache from its lookup), the slot's words when the
	// nursery moves into t4. See nurseOpenLocked.
	nslot [nurseryCap]int32
}

// nurseCap is the shard's nursery size: nurseryCap, or less for a small
// shard (none below 8 entries).
func (sh *ctShard) nurseCap() int32 { return min(nurseryCap, sh.limit>>3) } // limit > 0: a shift, not a signed division

// lock takes the shard for a writer: the mutex, then the sequence counter
// (odd). The counter's only other holder, tryLock, keeps it for a few
// instructions (a nursery entry; now and then a flush, or making room in a
// full shard), so lock spins for it, yielding after a while.
func (sh *ctShard) lock() {
	sh.mu.Lock()
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
func (sh *ctShard) unlock() {
	releaseSeq(&sh.seq)
	sh.mu.Unlock()
}

// tryLock takes the shard without the mutex if its sequence counter is
// still seq, the even value a lock-free lookup read: then nothing in the
// shard has changed since that lookup. Release it with releaseSeq.
func (sh *ctShard) tryLock(seq uint32) bool { return sh.seq.CompareAndSwap(seq, seq+1) }

// ctTable is one open-addressing table. Slot i occupies
// w[i*stride : (i+1)*stride]: kw key words, meta, lastSeen. Its control
// byte, byte i%8 of tags[i/8], is 0 for an empty slot and otherwise 0x80
// plus 7 bits of the key's hash. The control bytes (1 byte a slot, 1/32 of
// the slots' size) stay in cache where the slots do not: a probe scans 8 of
// them at a time and reads a slot only on a tag match, so a lookup of an
// untracked flow, every new flow, usually reads no slot at all, and a hit
// reads one. The capacity is a multiple of 8.
type ctTable struct {
	v6     bool
	kw     int
	stride int
	cap    uint64
	n      int // guarded by the shard's mu
	w      []uint64
	tags   []uint64
}

const (
	maxShards     = 256
	nurseryCap    = 16
	evictSamples  = 8
	sweepInterval = int64(time.Second)
	minTableCap   = 16
	// A table is at most 5/8 full: linear probing then averages under
	// 2 probes for a hit and about 4 for a miss.
	maxLoadNum, maxLoadDen = 5, 8
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
		sh.limit = int32(cfg.MaxFlows / n)
		if i < cfg.MaxFlows%n {
			sh.limit++
		}
		sh.maxCap = (int(sh.limit)*maxLoadDen/maxLoadNum + 1 + 7) &^ 7
		sh.rnd = mix(seed ^ uint64(i+1))
	}
	ct.timeouts = [5]int64{
		toTCP: int64(cfg.TCPTimeout), toTCPClosing: int64(cfg.TCPClosing),
		toUDP: int64(cfg.UDPTimeout), toICMP: int64(cfg.ICMPTimeout),
		toTCPUnanswered: int64(min(cfg.TCPUnanswered, cfg.TCPTimeout)),
	}
	return ct
}

func newCTTable(v6 bool, capacity int) *ctTable {
	t := &ctTable{v6: v6, kw: 2, cap: uint64(capacity)}
	if v6 {
		t.kw = 5
	}
	t.stride = t.kw + 2
	t.w = make([]uint64, capacity*t.stride)
	t.tags = make([]uint64, capacity/8)
	return t
}

// SWAR constants for the control bytes.
const (
	bytesLSB = 0x0101010101010101
	bytesMSB = 0x8080808080808080
	bytesLow = 0x7f7f7f7f7f7f7f7f
)

// zeroBytes returns 0x80 in each byte of x that is zero and 0 in the
// others, with no carries between bytes. Applied to control bytes XOR a
// tag repeated in every byte (tagOf(h) * bytesLSB), it marks the bytes
// that match the tag.
func zeroBytes(x uint64) uint64 { return ^((x&bytesLow + bytesLow) | x | bytesLow) }

// tagOf is the control byte of a key with hash h: bits the shard (low
// bits) and the home slot (high bits) do not use, and the high bit set.
func tagOf(h uint64) uint64 { return h>>8&0x7f | 0x80 }

// tagAt returns the control byte of slot i.
func (t *ctTable) tagAt(i uint64) uint64 {
	return atomic.LoadUint64(&t.tags[i>>3]) >> (i & 7 * 8) & 0xff
}

// setTagLocked sets the control byte of slot i.
func (t *ctTable) setTagLocked(i, tag uint64) { storeTag(&t.tags[i>>3], i&7, tag) }

// probe scans the control bytes from the home slot of h for the run of
// slots a key with hash h can occupy. It returns the tag matches up to
// the run's end (0x80 in each matching byte) of the 8-slot group starting
// at slot i, and the slot that ends the run (or -1 if not in this group).
// i is the slot to scan from; next is where the scan goes on.
func (t *ctTable) probe(i, want uint64) (match uint64, end int, next uint64) {
	off := i & 7 * 8
	tw := atomic.LoadUint64(&t.tags[i>>3]) >> off
	valid := ^uint64(0) >> off
	empty := ^tw & bytesMSB & valid
	x := tw ^ want
	match = zeroBytes(x) & valid
	end = -1
	if empty != 0 {
		match &= empty&-empty - 1
		end = int(i) + bits.TrailingZeros64(empty)>>3
	}
	next = i + 8 - i&7
	if next == t.cap {
		next = 0
	}
	return match, end, next
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

// shard picks the shard of k by its keyed hash (low bits; slots use the
// high bits), so that a sender cannot aim its flows at someone else's
// shard.
func (ct *conntrack) shard(k *ctKey) *ctShard { return &ct.shards[k.h&ct.mask] }

func (sh *ctShard) table(v6 bool) *ctTable {
	if v6 {
		return sh.t6.Load()
	}
	return sh.t4.Load()
}

// home is the first slot probed for hash h.
func (t *ctTable) home(h uint64) uint64 {
	hi, _ := bits.Mul64(h, t.cap)
	return hi
}

// find probes for k. It returns the slot's word offset and meta if found,
// or the offset of the empty slot that ends the probe. It is used both
// under the lock and by lock-free readers (whose result the sequence
// counter validates); the probe is bounded so a reader racing a writer
// cannot loop forever.
func (t *ctTable) find(k *ctKey) (base int, meta uint64, found bool) {
	if t.kw == 2 {
		return t.find4(k.h, k.w[0], k.w[1])
	}
	want := tagOf(k.h) * bytesLSB
	i := t.home(k.h)
	if t.tagAt(i) == want&0xff { // most keys sit in their home slot
		base = int(i) * t.stride
		if meta = atomic.LoadUint64(&t.w[base+t.kw]); meta != 0 && t.eq6(base, k) {
			return base, meta, true
		}
	}
	for range len(t.tags) + 1 {
		match, end, next := t.probe(i, want)
		for ; match != 0; match &= match - 1 {
			base = (int(i) + bits.TrailingZeros64(match)>>3) * t.stride
			if meta = atomic.LoadUint64(&t.w[base+t.kw]); meta != 0 && t.eq6(base, k) {
				return base, meta, true
			}
		}
		if end >= 0 {
			return end * t.stride, 0, false
		}
		i = next
	}
	return -1, 0, false
}

// find4 is find for an IPv4 key (k0, k1) with hash h. See view4.find4.
func (t *ctTable) find4(h, k0, k1 uint64) (base int, meta uint64, found bool) {
	return view4{cap: t.cap, tags: unsafe.Pointer(&t.tags[0]), w: unsafe.Pointer(&t.w[0])}.find4(h, k0, k1)
}

// find4 probes an IPv4 table for the key (k0, k1) with hash h, scanning
// the control bytes as probe does, inline: this is the fast path's lookup.
// It returns what find does.
func (v view4) find4(h, k0, k1 uint64) (base int, meta uint64, found bool) {
	want := tagOf(h) * bytesLSB
	i := v.home(h)
	for range v.cap/8 + 1 {
		off := i & 7 * 8
		tw := v.tagWord(i) >> off
		valid := ^uint64(0) >> off
		empty := ^tw & bytesMSB & valid
		x := tw ^ want
		match := zeroBytes(x) & valid
		if empty != 0 {
			match &= empty&-empty - 1
		}
		for ; match != 0; match &= match - 1 {
			base = (int(i) + bits.TrailingZeros64(match)>>3) * 4
			s := v.slot(base)
			if meta = atomic.LoadUint64(&s[2]); meta != 0 && atomic.LoadUint64(&s[0]) == k0 && atomic.LoadUint64(&s[1]) == k1 {
				return base, meta, true
			}
		}
		if empty != 0 {
			return (int(i) + bits.TrailingZeros64(empty)>>3) * 4, 0, false
		}
		if i += 8 - i&7; i == v.cap {
			i = 0
		}
	}
	return -1, 0, false
}

// free4 returns the first empty slot of the probe run of hash h.
func (v view4) free4(h uint64) uint64 {
	i := v.home(h)
	for {
		off := i & 7 * 8
		if empty := ^(v.tagWord(i) >> off) & bytesMSB & (^uint64(0) >> off); empty != 0 {
			return i + uint64(bits.TrailingZeros64(empty)>>3)
		}
		if i += 8 - i&7; i == v.cap {
			i = 0
		}
	}
}

func (t *ctTable) eq6(base int, k *ctKey) bool {
	w := t.w[base : base+5]
	for j := range 5 {
		if atomic.LoadUint64(&w[j]) != k.w[j] {
			return false
		}
	}
	return true
}

// word loads one word. Lock-free readers may store lastSeen words at any
// time, so even the lock holder reads atomically (a plain MOV on amd64).
func (t *ctTable) word(i int) uint64 { return atomic.LoadUint64(&t.w[i]) }

// hashSlot returns the hash of the key stored at base.
func (t *ctTable) hashSlot(ct *conntrack, base int) uint64 {
	var w [5]uint64
	for j := range t.kw {
		w[j] = t.word(base + j)
	}
	return ct.hashWords(w[:t.kw], t.v6)
}

func (t *ctTable) seen(base int) int64 {
	return int64(atomic.LoadUint64(&t.w[base+t.kw+1]))
}

// setEntryLocked updates the entry in the slot at base in place.
func (t *ctTable) setEntryLocked(base int, e flowEntry) {
	atomic.StoreUint64(&t.w[base+t.kw+1], uint64(e.lastSeen))
	atomic.StoreUint64(&t.w[base+t.kw], e.meta())
}

// fill writes key and entry into the empty slot at base, meta next, and
// the control byte for hash h last (atomic stores, see storeWord). A
// lock-free reader that sees the tag before the
// rest of the slot reads each word as zero or as its new value: a zero
// meta or key word is a miss, a zero lastSeen an expired entry that the
// locked path looks at again; neither is a false hit.
func (t *ctTable) fill(base int, kw []uint64, e flowEntry, h uint64) {
	for j, v := range kw {
		storeWord(&t.w[base+j], v)
	}
	storeWord(&t.w[base+t.kw+1], uint64(e.lastSeen))
	storeWord(&t.w[base+t.kw], e.meta())
	t.setTagLocked(uint64(base/t.stride), tagOf(h))
}

// nurseFind returns the index of the nursery entry of the IPv4 key
// (k0, k1) with hash h and its meta, or -1. Lock-free readers validate the
// result with the sequence counter.
func (sh *ctShard) nurseFind(h, k0, k1 uint64) (int, uint64) {
	want := tagOf(h) * bytesLSB
	for g := range sh.ntags {
		x := atomic.LoadUint64(&sh.ntags[g]) ^ want
		for m := zeroBytes(x); m != 0; m &= m - 1 {
			j := g*8 + bits.TrailingZeros64(m)>>3
			s := sh.nurse[j*4 : j*4+4 : j*4+4]
			if atomic.LoadUint64(&s[0]) == k0 && atomic.LoadUint64(&s[1]) == k1 {
				if meta := atomic.LoadUint64(&s[2]); meta != 0 {
					return j, meta
				}
			}
		}
	}
	return -1, 0
}

// reservedAt returns the nursery entry whose reserved t4 slot is i; the
// caller knows that slot i is reserved (full, meta 0).
func (sh *ctShard) reservedAt(i uint64) int {
	for n := range sh.nurseN {
		if sh.nslot[n] == int32(i) {
			return int(n)
		}
	}
	panic("policy: a reserved t4 slot without its nursery entry")
}

// nurseOpenLocked makes the new IPv4 flow (k0, k1) with hash h and entry
// e a nursery entry, with its t4 slot reserved, when the nursery, the
// shard and t4 each have room for one more (t4 counted conservatively:
// every entry of the shard); otherwise it reports false and does nothing.
//
// The reserved slot is the one the flow takes when the nursery moves into
// t4: the first empty slot of its probe run, whose control byte is set
// now, while the word is in cache from the flow's lookup, so that the
// flush writes only the slot. A reserved slot is full to probes but holds
// zeros (meta 0), which no lookup takes for a flow. When a deletion
// shifts a reserved slot back, its nursery entry learns the new slot
// (deleteLocked). growLocked moves the nursery into t4 first (flushLocked,
// which moves no slot), as it copies written slots only, and so does
// makeRoomLocked before it samples slots for a victim (a reserved slot's
// last-seen is 0).
//
// tw is t4's control bytes from the home slot of h to the end of its word
// (fromHome), as the caller read them with nothing changed since, or
// unknownTags: an empty slot in tw saves free4's look.
func (sh *ctShard) nurseOpenLocked(k0, k1, h, tw uint64, e flowEntry) bool {
	v := sh.view4()
	n := sh.nurseN
	if n >= sh.nurseCap() || sh.n >= sh.limit || uint64(sh.n+1)*maxLoadDen > v.cap*maxLoadNum {
		return false // no t4 (cap 0) fails the last test too
	}
	var i uint64
	if empty := ^tw & bytesMSB; empty != 0 {
		i = v.home(h) + uint64(bits.TrailingZeros64(empty)>>3)
	} else {
		i = v.free4(h)
	}
	tag := tagOf(h)
	storeTag((*uint64)(unsafe.Add(v.tags, i>>3*8)), i&7, tag)
	j := uint(n) % nurseryCap
	sh.nslot[j] = int32(i)
	ent := (*[4]uint64)(sh.nurse[j*4:])
	storeWord(&ent[0], k0)
	storeWord(&ent[1], k1)
	storeWord(&ent[3], uint64(e.lastSeen))
	storeWord(&ent[2], e.meta())
	storeTag(&sh.ntags[j>>3], uint64(j&7), tag)
	sh.nurseN = n + 1
	sh.n++
	if n+1 == sh.nurseCap() {
		// Full: the next new flow of the shard flushes it (flushLocked),
		// on average after ~256 of the engine's. Fetch the reserved
		// slots' lines meanwhile, without waiting for them.
		prefetchwSlots(v.w, &sh.nslot[0], int(n+1))
	}
	return true
}

// unknownTags is nurseOpenLocked's tw when the caller has not read t4's
// control bytes: all full, so that it looks itself.
const unknownTags = ^uint64(0)

// flushLocked moves the nursery into t4, into the slots reserved for its
// entries. Their cache lines are mostly in cache already: nurseOpenLocked
// prefetched them for writing when the nursery filled up, one new flow of
// the shard (~256 of the engine) earlier.
func (ct *conntrack) flushLocked(sh *ctShard) {
	n := int(sh.nurseN)
	if n == 0 {
		return
	}
	t := sh.t4.Load() // there is one: the entries have slots reserved in it
	v := sh.view4()
	for j, i := range sh.nslot[:n] {
		d, s := v.slot(int(i)*4), (*[4]uint64)(sh.nurse[j*4:])
		storeWord(&d[0], s[0])
		storeWord(&d[1], s[1])
		storeWord(&d[3], s[3])
		storeWord(&d[2], s[2])
	}
	t.n += n
	storeWord(&sh.ntags[0], 0)
	storeWord(&sh.ntags[1], 0)
	sh.nurseN = 0
}

func (ct *conntrack) timeout(proto policy.Protocol, flags uint8) int64 {
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

func slotProto(t *ctTable, base int) policy.Protocol {
	return policy.Protocol(atomic.LoadUint64(&t.w[base+t.kw-1]))
}

func (ct *conntrack) expired(proto policy.Protocol, e flowEntry, now int64) bool {
	return now-e.lastSeen > ct.timeout(proto, e.flags)
}

// lookupLocked returns the live entry of k and its slot; an expired one is
// removed and reported absent.
func (ct *conntrack) lookupLocked(sh *ctShard, k *ctKey, now int64) (base int, e flowEntry, ok bool) {
	ct.settleNurseLocked(sh, k)
	t := sh.table(k.v6)
	if t == nil {
		return -1, flowEntry{}, false
	}
	base, meta, ok := t.find(k)
	if !ok {
		return -1, flowEntry{}, false
	}
	e = entryOf(meta, t.seen(base))
	if ct.expired(policy.Protocol(k.w[k.keyWords()-1]), e, now) {
		ct.deleteLocked(sh, t, base)
		return -1, flowEntry{}, false
	}
	return base, e, true
}

// settleNurseLocked moves the nursery into t4 if it holds k.
func (ct *conntrack) settleNurseLocked(sh *ctShard, k *ctKey) {
	if !k.v6 && sh.nurseN != 0 {
		if j, _ := sh.nurseFind(k.h, k.w[0], k.w[1]); j >= 0 {
			ct.flushLocked(sh)
		}
	}
}

// updateLocked stores e in the slot of k found by lookupLocked.
func (ct *conntrack) updateLocked(sh *ctShard, k *ctKey, base int, e flowEntry) {
	sh.table(k.v6).setEntryLocked(base, e)
}

// removeLocked deletes the slot of k found by lookupLocked.
func (ct *conntrack) removeLocked(sh *ctShard, k *ctKey, base int) {
	ct.deleteLocked(sh, sh.table(k.v6), base)
}

// insertLocked inserts the entry of k, which the shard does not hold (in
// its tables or its nursery), making room first if the shard is at its
// limit: a new IPv4 flow joins the nursery, emptied first if full.
// fast4 calls it when its tryLock found the nursery or the shard full:
// nothing in the shard had changed since its lock-free miss.
func (ct *conntrack) insertLocked(sh *ctShard, k *ctKey, e flowEntry, now int64) {
	full := sh.n >= sh.limit
	nurse := !k.v6 && sh.nurseCap() > 0
	if nurse && sh.nurseN >= sh.nurseCap() {
		ct.flushLocked(sh)
	}
	if full {
		ct.makeRoomLocked(sh, now)
	}
	// A new IPv4 flow joins the nursery; when t4 has no room for it, t4
	// is created or grown (growLocked moves the nursery into t4 first),
	// unless it is at its bound: then the nursery is empty, and the flow
	// goes into t4 directly, below.
	for nurse && !sh.nurseOpenLocked(k.w[0], k.w[1], k.h, unknownTags, e) {
		if t := sh.t4.Load(); t == nil {
			sh.publish(newCTTable(false, min(minTableCap, sh.maxCap)))
		} else if ct.growLocked(sh, t) == t {
			nurse = false
		}
	}
	if nurse {
		return
	}
	t := sh.table(k.v6)
	if t == nil {
		t = newCTTable(k.v6, min(minTableCap, sh.maxCap))
		sh.publish(t)
	}
	if uint64(t.n+1)*maxLoadDen > t.cap*maxLoadNum || t.n+1 >= int(t.cap) {
		t = ct.growLocked(sh, t)
	}
	base, _, _ := t.find(k)
	t.fill(base, k.w[:t.kw], e, k.h)
	t.n++
	sh.n++
}

// publish makes t the shard's table. For t4 it also sets view4's fields,
// the capacity last: see view4.
func (sh *ctShard) publish(t *ctTable) {
	if t.v6 {
		sh.t6.Store(t)
		return
	}
	if t.cap < sh.cap4.Load() {
		panic("policy: t4 replaced by a smaller table") // view4's bounds need tables that only grow
	}
	sh.t4.Store(t)
	sh.tags4.Store(&t.tags[0])
	sh.w4.Store(&t.w[0])
	sh.cap4.Store(t.cap)
}

// view4 is t4 as lock-free IPv4 readers see it, from the shard's first
// cache line: its capacity (0: no t4 yet), control bytes and slots. The
// three are loaded separately and may come from different tables while a
// writer swaps t4; the sequence counter, which such a writer holds odd,
// makes the reader discard what it read. Indexing stays in bounds all
// the same: tables only grow, publish stores the capacity after the
// pointers, and view4 loads it before them, so every index below the
// capacity loaded is inside both arrays.
type view4 struct {
	cap  uint64
	tags unsafe.Pointer // *uint64, cap/8 words
	w    unsafe.Pointer // *uint64, cap*4 words
}

func (sh *ctShard) view4() view4 {
	c := sh.cap4.Load()
	return view4{cap: c, tags: unsafe.Pointer(sh.tags4.Load()), w: unsafe.Pointer(sh.w4.Load())}
}

// tagWord returns the control-byte word holding slot i's.
func (v view4) tagWord(i uint64) uint64 {
	return atomic.LoadUint64((*uint64)(unsafe.Add(v.tags, i>>3*8)))
}

// slot returns the slot at word offset base.
func (v view4) slot(base int) *[4]uint64 { return (*[4]uint64)(unsafe.Add(v.w, base*8)) }

// home is the first slot probed for hash h.
func (v view4) home(h uint64) uint64 {
	hi, _ := bits.Mul64(h, v.cap)
	return hi
}

// growLocked doubles t (up to the shard's capacity bound) and returns the
// new table.
func (ct *conntrack) growLocked(sh *ctShard, t *ctTable) *ctTable {
	if !t.v6 {
		ct.flushLocked(sh) // a growth copies written slots only
	}
	newCap := min(int(t.cap)*2, sh.maxCap)
	if newCap <= int(t.cap) {
		return t // at the bound, which the shard limit keeps at most 5/8 full
	}
	nt := newCTTable(t.v6, newCap)
	for base := 0; base < len(t.w); base += t.stride {
		meta := t.word(base + t.kw)
		if meta == 0 {
			continue
		}
		var k ctKey
		k.v6 = t.v6
		for j := range t.kw {
			k.w[j] = t.word(base + j)
		}
		k.h = ct.hashWords(k.w[:], t.v6)
		nb, _, _ := nt.find(&k)
		for j := range t.stride {
			nt.w[nb+j] = t.word(base + j) // nt is not published yet
		}
		nt.setTagLocked(uint64(nb/nt.stride), tagOf(k.h))
	}
	nt.n = t.n
	sh.publish(nt)
	return nt
}

// deleteLocked empties the slot at base and shifts the following entries
// of its probe run back. The caller holds the sequence counter odd.
// A slot reserved for a nursery entry (nurseOpenLocked) shifts like the
// others, by the hash of the nursery entry's key, and the entry is told
// its new slot: a deletion does not move the nursery into t4, so that
// the new flows' slot writes stay with the packets that made them
// (BenchmarkVerdict/new counts them).
func (ct *conntrack) deleteLocked(sh *ctShard, t *ctTable, base int) {
	i := uint64(base / t.stride)
	j := i
	for {
		if j++; j == t.cap {
			j = 0
		}
		jb := int(j) * t.stride
		tag := t.tagAt(j)
		if tag == 0 {
			break
		}
		var h uint64
		n := -1
		if !t.v6 && sh.nurseN != 0 && t.word(jb+t.kw) == 0 {
			n = sh.reservedAt(j)
			h = t.home(ct.hashWords(sh.nurse[n*4:n*4+2], false))
		} else {
			h = t.home(t.hashSlot(ct, jb))
		}
		// The entry at j may move to i if i lies cyclically in [h, j).
		if (j-h+t.cap)%t.cap >= (j-i+t.cap)%t.cap {
			ib := int(i) * t.stride
			for x := 0; x < t.stride; x++ {
				storeWord(&t.w[ib+x], t.word(jb+x))
			}
			t.setTagLocked(i, tag)
			if n >= 0 {
				sh.nslot[n] = int32(i)
			}
			i = j
		}
	}
	ib := int(i) * t.stride
	t.setTagLocked(i, 0)
	for x := 0; x < t.stride; x++ {
		storeWord(&t.w[ib+x], 0)
	}
	t.n--
	sh.n--
}

// makeRoomLocked frees at least one entry of a full shard. The caller
// holds the sequence counter odd.
func (ct *conntrack) makeRoomLocked(sh *ctShard, now int64) {
	if now-sh.lastSweep >= sweepInterval {
		sh.lastSweep = now
		ct.sweepLocked(sh, now)
		if sh.n < sh.limit {
			return
		}
	}
	// Sample a few entries from a random slot on and evict the one seen
	// least recently (an approximate LRU). The nursery moves first: it
	// may not hold reservations while t4's slots move (nurseOpenLocked).
	ct.flushLocked(sh)
	sh.rnd = mix(sh.rnd + 0x9e3779b97f4a7c15)
	t := sh.t4.Load()
	if t6 := sh.t6.Load(); t6 != nil && (t == nil || t6.n > 0 && sh.rnd&1 == 0 || t.n == 0) {
		t = t6
	}
	if t == nil || t.n == 0 {
		return // the nursery, just emptied into t4, held nothing either
	}
	i := t.home(sh.rnd)
	victim, oldest, n := -1, int64(0), 0
	for range t.cap {
		base := int(i) * t.stride
		if t.tagAt(i) != 0 {
			if s := t.seen(base); n == 0 || s < oldest {
				victim, oldest = base, s
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

// sweepLocked removes the expired entries of the shard. The caller holds
// the sequence counter odd.
func (ct *conntrack) sweepLocked(sh *ctShard, now int64) int {
	ct.flushLocked(sh) // so that idle flows still in the nursery expire too
	n := 0
	for _, t := range []*ctTable{sh.t4.Load(), sh.t6.Load()} {
		if t == nil {
			continue
		}
		for i := uint64(0); i < t.cap; {
			base := int(i) * t.stride
			if t.tagAt(i) == 0 {
				i++
				continue
			}
			meta := t.word(base + t.kw)
			if meta != 0 && ct.expired(slotProto(t, base), entryOf(meta, t.seen(base)), now) {
				ct.deleteLocked(sh, t, base) // another entry may shift into i
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
