package main

import (
	"os"
	"runtime/debug"
)

// defaultMemoryLimit is the agent's soft Go memory limit unless GOMEMLIMIT
// is set. wireguard-go's 64 KiB message buffers used to grow the heap to
// 300+ MB under load; overlay now bounds them (overlay/bufpool.go, 48 MiB
// by default), and the limit stays as a safety net. The live heap under
// load with 100k flows is about 70 MB: a limit close to it makes the GC
// run continuously (docs/performance.md has the measurements).
const defaultMemoryLimit = 96 << 20

// setMemoryLimit applies limit (bytes; 0 = none) unless GOMEMLIMIT is set.
func setMemoryLimit(limit int64) {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); ok || limit <= 0 {
		return
	}
	debug.SetMemoryLimit(limit)
}
