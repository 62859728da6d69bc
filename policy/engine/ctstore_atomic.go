//go:build race || !(amd64 || 386)

package engine

import "sync/atomic"

// storeWord: see ctstore.go. An atomic store orders the word after every
// earlier store (a release on arm64), and lets the race detector check
// everything else.
func storeWord(p *uint64, v uint64) { atomic.StoreUint64(p, v) }

// releaseSeq: see ctstore.go.
func releaseSeq(seq *atomic.Uint32) { seq.Add(1) }

// storeTag: see ctstore.go.
func storeTag(p *uint64, i, tag uint64) {
	atomic.StoreUint64(p, atomic.LoadUint64(p)&^(0xff<<(i*8))|tag<<(i*8))
}
