package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// TestMemoryLimitFor: the limit is the configured one until the live heap
// needs more, then a quarter above the live heap.
func TestMemoryLimitFor(t *testing.T) {
	const base = 96 << 20
	for _, c := range []struct{ live, want int64 }{
		{0, base},
		{70 << 20, base},               // rung d of the ladder: 10k rules, 100k flows
		{130 << 20, 130 << 20 * 5 / 4}, // 100k rules
	} {
		if got := memoryLimitFor(base, c.live); got != c.want {
			t.Errorf("live %d MiB: limit %d MiB, want %d", c.live>>20, got>>20, c.want>>20)
		}
	}
}

// TestAdaptMemoryLimit: the loop sets the limit for the live heap and
// stops with its context.
func TestAdaptMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	keep := make([]byte, 64<<20) // a live heap of more than base/0.8
	for i := range keep {
		keep[i] = byte(i)
	}
	runtime.GC() // the live heap is what the last collection marked
	const base = 8 << 20
	debug.SetMemoryLimit(base)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { adaptMemoryLimit(ctx, base, 10*time.Millisecond); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for debug.SetMemoryLimit(-1) < 64<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("limit %d MiB with a live heap of 64 MiB", debug.SetMemoryLimit(-1)>>20)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	runtime.KeepAlive(keep)
}
