//go:build !race && (amd64 || 386)

package engine

import (
	"sync/atomic"
	"unsafe"
)

// storeWord writes a conntrack word while holding the shard (its sequence
// counter odd). Lock-free readers load words atomically and validate what
// they read with the counter. On x86 a plain store is enough: an aligned
// word never tears, stores become visible in program order (TSO), and the
// compiler keeps their order. Other architectures
// (arm64 may make stores visible out of order) and race builds use an
// atomic store (ctstore_atomic.go).
func storeWord(p *uint64, v uint64) { *p = v }

// releaseSeq makes the sequence counter of a shard the caller holds even
// again, releasing it (see conntrack). On x86 a plain store is a release:
// every earlier load and store stays before it (TSO), and saves the
// locked instruction of an atomic store (XCHG).
func releaseSeq(seq *atomic.Uint32) {
	p := (*uint32)(unsafe.Pointer(seq))
	*p++
}

// storeTag writes control byte i (0-7) of the word at p, which holds
// control bytes, while holding the shard: one byte store on x86, which
// readers' word loads see whole (and no load of the word first).
func storeTag(p *uint64, i, tag uint64) {
	*(*uint8)(unsafe.Add(unsafe.Pointer(p), i)) = uint8(tag)
}
