package main

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// defaultMemoryLimit is the agent's soft Go memory limit unless GOMEMLIMIT
// is set (adaptMemoryLimit raises it above a large live heap). An agent's
// live heap is 8-10 MB with 10k rules, 17-19 MB with 100k flows tracked as
// well, but the heap goal of GOGC=100 let transients (a fresh cell merging
// 10k rules, a policy push) grow the heap to twice the live heap, and the
// resident pages stayed: a fresh cell peaked at 62 MB of RSS with a 96 MiB
// limit, 52 with 40 MiB. Under the ladder's load (rung d, 100k flows) the
// heap stayed at the 40 MiB limit's goal, ~30 MB, 10 MB above the live
// heap; at 32 MiB its goal is ~22 MB, for about one collection more every
// 5 s (the data path allocated ~3 MB/s, most of it StdNetBind's endpoint
// per datagram; weft's DirectBind allocates none). The message buffers
// are outside the heap (overlay/bufpool.go) and outside the limit.
const defaultMemoryLimit = 32 << 20

// setMemoryLimit applies limit (bytes; 0 = none) unless GOMEMLIMIT is set,
// and keeps it above the live heap until ctx ends (adaptMemoryLimit).
func setMemoryLimit(ctx context.Context, limit int64) {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); ok || limit <= 0 {
		return
	}
	debug.SetMemoryLimit(limit)
	go adaptMemoryLimit(ctx, limit, time.Second)
}

// memoryLimitFor is the soft limit for a live heap of live bytes when the
// runtime's memory other than heap objects (fragmentation, stacks,
// metadata) is overhead bytes: base, or overhead plus 4/3 of the live heap
// when that is more. The runtime sets the heap goal 3% under the limit
// less the overhead, so the heap may then grow about 29% above the live
// heap before a collection.
//
// The limit counts all of the runtime's memory, not only heap objects.
// An earlier version set max(base, 1.25 × live): with a large live heap
// (an agent holding 100k signed rules has 120-140 MB) the overhead, some
// 35 MB, then filled the quarter, the heap goal sank to the heap's size,
// and the collector ran back to back at the 50% of the CPU the runtime
// allows it. Two idle agents of BenchmarkPolicyScale spent 57% and 68%
// of a core each, and pushing 100k rules took 73 s.
func memoryLimitFor(base, live, overhead int64) int64 {
	return max(base, live+live/3+overhead)
}

// overheadMetrics give the runtime's overhead: total − released − free
// heap − heap objects, what the runtime itself takes off the limit to find
// the heap goal.
var overheadMetrics = []string{
	"/memory/classes/total:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/objects:bytes",
}

// adaptMemoryLimit sets the soft limit to memoryLimitFor the live heap
// after the last collection and the runtime's current overhead, every
// period, until ctx ends.
func adaptMemoryLimit(ctx context.Context, base int64, period time.Duration) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	for _, name := range overheadMetrics {
		sample = append(sample, metrics.Sample{Name: name})
	}
	sample = append(sample, metrics.Sample{Name: "/gc/cycles/total:gc-cycles"}, metrics.Sample{Name: "/gc/heap/allocs:bytes"})
	tick := time.NewTicker(period)
	defer tick.Stop()
	limit := base
	var lastTrim time.Time
	var lastCycles, lastAllocs uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		metrics.Read(sample)
		var v [7]int64
		for i, s := range sample {
			if s.Value.Kind() != metrics.KindUint64 {
				return
			}
			v[i] = int64(s.Value.Uint64())
		}
		// Quiet: no collection and less than quietAllocs allocated since
		// the last tick.
		cycles, allocs := uint64(v[5]), uint64(v[6])
		quiet := cycles == lastCycles && allocs-lastAllocs < quietAllocs
		lastCycles, lastAllocs = cycles, allocs
		live, overhead := v[0], v[1]-v[2]-v[3]-v[4]
		if want := memoryLimitFor(base, live, max(overhead, 0)); want != limit {
			debug.SetMemoryLimit(want)
			limit = want
		}
		free, garbage := v[3], max(v[4]-live, 0)
		now := time.Now()
		if shouldTrim(free, garbage, now.Sub(lastTrim), quiet) {
			debug.FreeOSMemory()
			lastTrim = now
			metrics.Read(sample[5:])
			lastCycles, lastAllocs = sample[5].Value.Uint64(), sample[6].Value.Uint64()
		}
	}
}

// Trimming the heap. The runtime keeps freed heap pages resident and gives
// them back slowly (its background scavenger aims at the memory limit, far
// above an idle agent's heap). An agent's heap is 8-10 MB at rest with
// 10k rules, but loading them from state.json, a peer's full state, a
// policy push or a burst of new flows leaves tens of MB free and resident,
// or garbage not yet collected (the heap goal of GOGC=100 is twice the
// live heap): in the ladder an agent held 15-21 MB of heap 3 s after start,
// 33-43 MB of RSS at 10 s. So the agent returns it (debug.FreeOSMemory: a
// collection, then every free page): while it collects, at most every
// trimEvery and when more than trimAbove is free; once a whole tick has
// passed without a collection and with less than quietAllocs allocated
// (the transient is over; under the ladder's load the data path allocates
// 3 MB/s and more; a collection of a 10 MB heap takes a few
// milliseconds), trimQuiet after the last trim when more than
// trimQuietAbove is free or garbage: an agent at rest then holds its live
// heap and at most ~1 MiB more (the garbage of gossip and timers, ~0.1
// MB/s: one trim every ten seconds or so, a few milliseconds each), not
// the 4 MiB more a busy one may keep between trims.
//
// The executable's pages (15 MB of text and rodata, nearly all mapped at
// start-up by fault-around) are left alone: they are clean page cache,
// shared and reclaimable, and dropping their page-table entries would
// lower VmRSS without freeing memory (docs/memory.md).
const (
	trimAbove      = 4 << 20
	trimEvery      = 30 * time.Second
	trimQuiet      = 3 * time.Second
	trimQuietAbove = 1 << 20

	quietAllocs = 1 << 20 // per tick
)

// shouldTrim says whether to return the heap's free pages and garbage to
// the kernel, given its free and resident bytes, its garbage (heap objects
// less the live heap), the time since the last trim, and whether the
// runtime has been quiet (no collection) since the last tick.
func shouldTrim(free, garbage int64, since time.Duration, quiet bool) bool {
	if quiet {
		return since >= trimQuiet && free+garbage > trimQuietAbove
	}
	return since >= trimEvery && free > trimAbove
}
