package engine

import (
	"encoding/binary"
	"github.com/weft-net/weft/policy"
	"math"
	"math/bits"
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

// conntrack is a bounded flow table split into shards chosen by the low
// bits of a seeded hash of the key. Each shard holds two open-addressing
// tables of pointer-free words (linear probing, backward-shift deletion):
// one for IPv4 keys, whose slots are 4 words (key, key, meta, lastSeen),
// two to a 64-byte line, and one for IPv6, whose slots are 8 words (5 key
// words, meta, lastSeen, padding), a line each. The hash's high bits pick
// the key's home line, whose first slot its probe starts at: a lookup
// mostly reads that line and no other, and a new flow goes into the empty
// slot that ended its lookup's probe, on the line the lookup has just
// brought into cache. A slot is empty when its meta word is zero.
//
// The shard limits add up to MaxFlows and a table's capacity never exceeds
// 8/5 of its shard's limit, so memory is bounded by MaxFlows: at most 51
// bytes per IPv4 flow (32 B a slot at 5/8 load). Tables start small and
// double when 5/8 full.
//
// Concurrency: a shard's writers take its mutex, then make its sequence
// counter odd, change the shard, and make the counter even again (lock,
// unlock); the fields marked "guarded by the lock" change only so.
// Readers take no lock: they load the counter, the words (atomic loads),
// and the counter again (a seqlock), and one that sees it odd or changed
// takes the lock and looks again. A reader refreshes lastSeen with an
// atomic store, at most once per tick of the coarse clock. A reader that
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
	timeouts  [5]int64 // by timeout class
	evictions atomic.Uint64
}

// ctShard is one cache line (TestShardLayout): shards share no line.
type ctShard struct {
	seq       atomic.Uint32 // odd while a writer holds the shard; see conntrack
	n         int32         // entries in t4 and t6; guarded by the lock
	t4, t6    atomic.Pointer[ctTable]
	limit     int32      // at most n entries
	maxCap    int        // capacity bound of each table (slots)
	lastSweep int64      // guarded by the lock
	rnd       uint64     // eviction sampling state; guarded by the lock
	mu        sync.Mutex // orders the writers; see lock
}

// lock takes the shard for a writer: the mutex (a writer that runs long, a
// sweep or a table's growth, makes the others sleep), then the sequence
// counter, made odd.
func (sh *ctShard) lock() {
	sh.mu.Lock()
	sh.seq.Add(1)
}

// unlock releases a shard taken with lock.
func (sh *ctShard) unlock() {
	sh.seq.Add(1)
	sh.mu.Unlock()
}

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

// ctTable is one open-addressing table. Slot i occupies
// w[i*stride : (i+1)*stride]: kw key words, meta, lastSeen (and a pad
// word for IPv6), its first word at the start of a cache line for IPv6
// and of every other slot for IPv4. Only the lock holder changes a table
// (lock-free readers store lastSeen words) and its n; a new table, made
// by growLocked, replaces it.
type ctTable struct {
	w      []uint64
	cap    uint64 // slots, even
	lines  uint64 // cap >> shift: the home lines
	shift  uint   // log2 of the slots a line: 1 (IPv4) or 0 (IPv6)
	kw     int    // key words: 2 or 5
	stride int    // words a slot: 4 or 8
	v6     bool
	n      int // entries; guarded by the shard's lock
	growAt int // n at which an insert doubles the table first
}

const (
	maxShards     = 256
	evictSamples  = 8
	sweepInterval = int64(time.Second)
	minTableCap   = 16
	// A table is at most 5/8 full: a miss then mostly reads the home line
	// only (it holds two IPv4 slots).
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
		limit := cfg.MaxFlows / n
		if i < cfg.MaxFlows%n {
			limit++
		}
		sh.setLimit(limit)
		sh.rnd = mix(seed ^ uint64(i+1))
	}
	ct.timeouts = [5]int64{
		toTCP: int64(cfg.TCPTimeout), toTCPClosing: int64(cfg.TCPClosing),
		toUDP: int64(cfg.UDPTimeout), toICMP: int64(cfg.ICMPTimeout),
		toTCPUnanswered: int64(min(cfg.TCPUnanswered, cfg.TCPTimeout)),
	}
	return ct
}

// setLimit bounds the shard to limit entries, and so its tables to 8/5 of
// that (and at least one slot more), a multiple of 8 slots.
func (sh *ctShard) setLimit(limit int) {
	sh.limit = int32(limit)
	sh.maxCap = (limit*maxLoadDen/maxLoadNum + 1 + 7) &^ 7
}

// newCTTable returns an empty table of capacity slots (even), with its
// words on a 64-byte boundary, that grows at 5/8 full unless it is at
// maxCap.
func newCTTable(v6 bool, capacity, maxCap int) *ctTable {
	t := &ctTable{v6: v6, kw: 2, stride: 4, shift: 1, cap: uint64(capacity), growAt: math.MaxInt}
	if v6 {
		t.kw, t.stride, t.shift = 5, 8, 0
	}
	t.lines = t.cap >> t.shift
	if capacity < maxCap {
		t.growAt = capacity * maxLoadNum / maxLoadDen
	}
	n := capacity * t.stride
	w := make([]uint64, n+7)
	off := int(-uintptr(unsafe.Pointer(&w[0])) % 64 / 8) // the address only: the GC does not move heap objects
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

// home is the first slot probed for hash h: the first of its home line.
func (t *ctTable) home(h uint64) uint64 {
	hi, _ := bits.Mul64(h, t.lines)
	return hi << t.shift
}

// find probes for k. It returns the slot's word offset and meta if found,
// or the offset of the empty slot that ends the probe. It is the one
// lookup, under the lock and lock-free (the sequence counter validates the
// result): the probe is bounded so that a reader racing a writer cannot
// loop forever, and then returns -1.
func (t *ctTable) find(k *ctKey) (base int, meta uint64, found bool) {
	i := t.home(k.h)
	for range t.cap {
		base = int(i) * t.stride
		s := t.w[base : base+t.stride : base+t.stride]
		if meta = atomic.LoadUint64(&s[t.kw]); meta == 0 {
			return base, 0, false
		}
		if atomic.LoadUint64(&s[0]) == k.w[0] && atomic.LoadUint64(&s[1]) == k.w[1] && (t.kw == 2 || eq6(s, k)) {
			return base, meta, true
		}
		if i++; i == t.cap {
			i = 0
		}
	}
	return -1, 0, false
}

// eq6 compares the last three key words of an IPv6 slot s with k's.
func eq6(s []uint64, k *ctKey) bool {
	return atomic.LoadUint64(&s[2]) == k.w[2] && atomic.LoadUint64(&s[3]) == k.w[3] && atomic.LoadUint64(&s[4]) == k.w[4]
}

// word loads one word. Lock-free readers may store lastSeen words at any
// time, so even the lock holder reads atomically (a plain MOV on amd64).
func (t *ctTable) word(i int) uint64 { return atomic.LoadUint64(&t.w[i]) }

// hashSlot returns the hash of the key stored at base.
func (t *ctTable) hashSlot(ct *conntrack, base int) uint64 {
	return ct.hashWords(t.w[base:base+t.kw], t.v6)
}

func (t *ctTable) seen(base int) int64 {
	return int64(atomic.LoadUint64(&t.w[base+t.kw+1]))
}

// setEntryLocked updates the entry in the slot at base in place.
func (t *ctTable) setEntryLocked(base int, e flowEntry) {
	storeWord(&t.w[base+t.kw+1], uint64(e.lastSeen))
	storeWord(&t.w[base+t.kw], e.meta())
}

// fillLocked writes key and entry into the empty slot at base, meta (which
// marks the slot full) last.
func (t *ctTable) fillLocked(base int, k *ctKey, e flowEntry) {
	for j := range t.kw {
		storeWord(&t.w[base+j], k.w[j])
	}
	t.setEntryLocked(base, e)
	t.n++
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
// its table if that is 5/8 full. m is where a lock-free lookup found k
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

// growLocked replaces t (nil: none yet) by a table of twice its capacity,
// up to the shard's bound, holding its entries, and returns it.
func (ct *conntrack) growLocked(sh *ctShard, t *ctTable, v6 bool) *ctTable {
	c := minTableCap
	if t != nil {
		c = 2 * int(t.cap)
	}
	nt := newCTTable(v6, min(c, sh.maxCap), sh.maxCap)
	if t != nil {
		for base := 0; base < len(t.w); base += t.stride {
			if t.word(base+t.kw) == 0 {
				continue
			}
			k := ctKey{v6: v6}
			for j := range t.kw {
				k.w[j] = t.word(base + j)
			}
			k.h = ct.hashWords(k.w[:t.kw], v6)
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
	i := uint64(base / t.stride)
	j := i
	for {
		if j++; j == t.cap {
			j = 0
		}
		jb := int(j) * t.stride
		if t.word(jb+t.kw) == 0 {
			break
		}
		// The entry at j may move to i if i lies cyclically in [home, j).
		h := t.home(t.hashSlot(ct, jb))
		if (j-h+t.cap)%t.cap >= (j-i+t.cap)%t.cap {
			ib := int(i) * t.stride
			for x := range t.stride {
				storeWord(&t.w[ib+x], t.word(jb+x))
			}
			i = j
		}
	}
	ib := int(i) * t.stride
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
	i := t.home(sh.rnd)
	victim, oldest, n := -1, int64(0), 0
	for range t.cap {
		base := int(i) * t.stride
		if t.word(base+t.kw) != 0 {
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

// sweepLocked removes the expired entries of the shard.
func (ct *conntrack) sweepLocked(sh *ctShard, now int64) int {
	n := 0
	for _, t := range []*ctTable{sh.t4.Load(), sh.t6.Load()} {
		if t == nil {
			continue
		}
		for base := 0; base < len(t.w); {
			meta := t.word(base + t.kw)
			if meta != 0 && ct.expired(slotProto(t, base), entryOf(meta, t.seen(base)), now) {
				ct.deleteLocked(sh, t, base) // another entry may shift into this slot
				n++
				continue
			}
			base += t.stride
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
