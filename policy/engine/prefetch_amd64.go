package engine

import "unsafe"

// prefetchwSlots asks the CPU to fetch, for writing, the cache lines of
// the n 32-byte slots of w whose indexes slots[0:n] holds, without waiting
// for them (PREFETCHW, which never faults).
//
//go:noescape
func prefetchwSlots(w unsafe.Pointer, slots *int32, n int)
