//go:build !amd64

package policy

import "unsafe"

// prefetchwSlots: see prefetch_amd64.go. Elsewhere it does nothing.
func prefetchwSlots(unsafe.Pointer, *int32, int) {}
