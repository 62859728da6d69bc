package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

// TestMemoryLimitFor: the limit is the configured one until the live heap
// needs more, then overhead plus 4/3 of the live heap.
func TestMemoryLimitFor(t *testing.T) {
	const base, mib = 96 << 20, 1 << 20
	for _, c := range []struct{ live, overhead, want int64 }{
		{0, 0, base},
		{63 * mib, 10 * mib, base}, // rung d of the ladder
		{72 * mib, 10 * mib, 106 * mib},
		{129 * mib, 35 * mib, 207 * mib}, // 100k rules
	} {
		if got := memoryLimitFor(base, c.live, c.overhead); got != c.want {
			t.Errorf("live %d MiB, overhead %d MiB: limit %d MiB, want %d", c.live/mib, c.overhead/mib, got/mib, c.want/mib)
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
	for debug.SetMemoryLimit(-1) < 80<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("limit %d MiB with a live heap of 64 MiB", debug.SetMemoryLimit(-1)>>20)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // a few more steps
	cancel()
	<-done
	// The runtime's heap goal (the limit less its overhead, less 3%)
	// leaves the heap at least a quarter above the live heap.
	s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if goal, live := s[0].Value.Uint64(), s[1].Value.Uint64(); goal < live*124/100 {
		t.Errorf("limit %d MiB: heap goal %.1f MiB, %.2f× the live heap of %.1f MiB; want at least 1.25×",
			debug.SetMemoryLimit(-1)>>20, float64(goal)/(1<<20), float64(goal)/float64(live), float64(live)/(1<<20))
	}
	runtime.KeepAlive(keep)
}

func TestShouldTrim(t *testing.T) {
	for _, c := range []struct {
		free, garbage int64
		since         time.Duration
		quiet         bool
		want          bool
	}{
		{0, 0, time.Hour, false, false},
		{trimAbove, 0, time.Hour, false, false},
		{trimAbove + 1, 0, trimEvery, false, true},
		{64 << 20, 0, trimEvery - time.Millisecond, false, false},
		{0, 64 << 20, time.Hour, false, false}, // collecting: garbage goes by itself
		// Quiet: no collection for a tick, a transient is over.
		{64 << 20, 0, trimQuiet, true, true},
		{0, 64 << 20, trimQuiet, true, true},
		{trimQuietAbove / 2, trimQuietAbove/2 + 1, trimQuiet, true, true},
		{64 << 20, 64 << 20, trimQuiet - time.Millisecond, true, false},
		{trimQuietAbove / 2, trimQuietAbove / 2, time.Hour, true, false},
		{trimAbove / 2, 0, trimQuiet, true, true}, // at rest the bar is lower than when busy
		{trimAbove / 2, 0, time.Hour, false, false},
	} {
		if got := shouldTrim(c.free, c.garbage, c.since, c.quiet); got != c.want {
			t.Errorf("free %d, garbage %d, %v since the last trim, quiet %v: %v, want %v", c.free, c.garbage, c.since, c.quiet, got, c.want)
		}
	}
}

// TestAdaptMemoryLimitTrims: 32 MiB freed by the program goes back to the
// kernel within a few periods of the loop, not whenever the runtime's
// scavenger gets to it.
func TestAdaptMemoryLimitTrims(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	free := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	makeResidentGarbage(32)
	runtime.GC()
	metrics.Read(free)
	if f := free[0].Value.Uint64(); f <= trimAbove {
		t.Skipf("the runtime released the garbage itself (%d bytes free): nothing to check", f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { adaptMemoryLimit(ctx, 96<<20, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(5 * time.Second); ; {
		metrics.Read(free)
		if free[0].Value.Uint64() <= trimAbove {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d MiB free and resident 5 s after the loop started", free[0].Value.Uint64()>>20)
		}
		time.Sleep(10 * time.Millisecond) // polling, with a deadline
	}
}

// TestAdaptMemoryLimitTrimsWhenQuiet: garbage freed after a trim goes back
// to the kernel once a tick passes without a collection, trimQuiet after
// that trim, not trimEvery.
func TestAdaptMemoryLimitTrimsWhenQuiet(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	free := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	// freeGarbage leaves 32 MiB free and resident, and reports whether
	// the runtime kept it (else there is nothing to check).
	freeGarbage := func() bool {
		makeResidentGarbage(32)
		runtime.GC()
		metrics.Read(free)
		return free[0].Value.Uint64() > trimAbove
	}
	// waitTrimmed waits up to d for the free heap to go back.
	waitTrimmed := func(d time.Duration) bool {
		for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			metrics.Read(free)
			if free[0].Value.Uint64() <= trimAbove {
				return true
			}
		}
		return false
	}
	if !freeGarbage() {
		t.Skip("the runtime released the garbage itself: nothing to check")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { adaptMemoryLimit(ctx, 96<<20, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	if !waitTrimmed(5 * time.Second) { // the first trim
		t.Fatalf("%d MiB free and resident 5 s after the loop started", free[0].Value.Uint64()>>20)
	}
	if !freeGarbage() {
		t.Skip("the runtime released the garbage itself: nothing to check")
	}
	if !waitTrimmed(trimQuiet + 2*time.Second) {
		t.Fatalf("%d MiB free and resident %v after a collection, the loop quiet since", free[0].Value.Uint64()>>20, trimQuiet+2*time.Second)
	}
}

// TestAdaptMemoryLimitCollectsWhenQuiet: 32 MiB of garbage that no
// collection has reclaimed (collections off) is collected and its pages
// returned once the loop has been quiet for a tick.
func TestAdaptMemoryLimitCollectsWhenQuiet(t *testing.T) {
	oldLimit := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(oldLimit)
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}
	runtime.GC() // a live heap of the test's own, before the garbage
	metrics.Read(s)
	before := s[0].Value.Uint64()
	makeResidentGarbage(32)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { adaptMemoryLimit(ctx, 96<<20, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(trimQuiet + 2*time.Second)
	for {
		metrics.Read(s)
		objects, free := s[0].Value.Uint64(), s[1].Value.Uint64()
		if objects < before+trimAbove && free <= trimAbove {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("heap objects %d MiB (%d MiB before the garbage), %d MiB free and resident, the loop quiet for %v",
				objects>>20, before>>20, free>>20, trimQuiet+2*time.Second)
		}
		time.Sleep(10 * time.Millisecond) // polling, with a deadline
	}
}

// makeResidentGarbage allocates mib MiB, writes every byte (so the pages
// are resident) and drops it: garbage for the next collection.
func makeResidentGarbage(mib int) {
	garbage := make([][]byte, mib)
	for i := range garbage {
		garbage[i] = make([]byte, 1<<20)
		for j := range garbage[i] {
			garbage[i][j] = 1
		}
	}
}
