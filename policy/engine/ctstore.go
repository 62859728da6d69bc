package engine

import "sync/atomic"

// storeWord writes a conntrack word while holding the shard (its sequence
// counter odd). Lock-free readers load words atomically and validate what
// they read with the counter. The store is atomic in every build, so that
// the variant that ships is the one the race detector checks: a plain
// store racing with those loads is outside the Go memory model, whatever
// x86 does with it.
func storeWord(p *uint64, v uint64) { atomic.StoreUint64(p, v) }

// releaseSeq makes the sequence counter of a shard the caller holds even
// again, releasing it (see conntrack).
func releaseSeq(seq *atomic.Uint32) { seq.Add(1) }

// storeTag writes control byte i (0-7) of the word at p, which holds
// control bytes, while holding the shard.
func storeTag(p *uint64, i, tag uint64) {
	atomic.StoreUint64(p, atomic.LoadUint64(p)&^(0xff<<(i*8))|tag<<(i*8))
}
