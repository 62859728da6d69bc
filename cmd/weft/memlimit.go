package main

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// defaultMemoryLimit is the agent's soft Go memory limit unless GOMEMLIMIT
// is set. wireguard-go's 64 KiB message buffers used to grow the heap to
// 300+ MB under load; overlay now bounds them (overlay/bufpool.go, 48 MiB
// by default), and the limit stays as a safety net. The live heap under
// load with 100k flows is about 70 MB: a limit close to it makes the GC
// run continuously (docs/performance.md has the measurements).
const defaultMemoryLimit = 96 << 20

// setMemoryLimit applies limit (bytes; 0 = none) unless GOMEMLIMIT is set,
// and keeps it above the live heap until ctx ends (adaptMemoryLimit).
func setMemoryLimit(ctx context.Context, limit int64) {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); ok || limit <= 0 {
		return
	}
	debug.SetMemoryLimit(limit)
	go adaptMemoryLimit(ctx, limit, 2*time.Second)
}

// memoryLimitFor is the soft limit for a live heap of live bytes: base,
// or a quarter above the live heap when that is more. A fixed limit below
// the live heap makes the GC run without pause: an agent with 100k rules
// holds about 130 MB (the signed rules, their gossip queue, the compiled
// table) and burned a core per cell at 96 MiB, idle.
func memoryLimitFor(base, live int64) int64 {
	return max(base, live+live/4)
}

// adaptMemoryLimit sets the soft limit to memoryLimitFor the live heap
// after the last collection, every period, until ctx ends.
func adaptMemoryLimit(ctx context.Context, base int64, period time.Duration) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	tick := time.NewTicker(period)
	defer tick.Stop()
	limit := base
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		if want := memoryLimitFor(base, int64(sample[0].Value.Uint64())); want != limit {
			debug.SetMemoryLimit(want)
			limit = want
		}
	}
}
