//go:build !amd64

package engine

import "unsafe"

// prefetchwSlots: see prefetch_amd64.go. Elsewhere it does nothing.
func prefetchwSlots(unsafe.Pointer, *int32, int) {}
