package main

import (
	"os"
	"runtime/debug"
)

// defaultMemoryLimit is the agent's soft Go memory limit unless GOMEMLIMIT
// is set. Under load wireguard-go's pools of 64 KiB message buffers grow
// the heap to 300+ MB between collections; the limit makes the GC run
// before that (docs/performance.md has the measurements).
const defaultMemoryLimit = 96 << 20

// setMemoryLimit applies limit (bytes; 0 = none) unless GOMEMLIMIT is set.
func setMemoryLimit(limit int64) {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); ok || limit <= 0 {
		return
	}
	debug.SetMemoryLimit(limit)
}
