package overlay

import (
	"fmt"
	"os"
)

// Data paths of the WireGuard device (Config.DataPath).
const (
	// DataPathInline runs wireguard-go to completion (weft's patch,
	// third_party/wireguard-go/WEFT-PATCHES.md): the TUN reader seals and
	// sends each peer's part of its batch itself, and each UDP receiver
	// opens, checks and writes its batch to the TUN itself; no crypto
	// workers, no per-peer routines, no channel hand-off of packets.
	DataPathInline = "inline"
	// DataPathQueued is upstream wireguard-go's data path: the readers
	// hand batches to crypto workers and per-peer routines by channels.
	DataPathQueued = "queued"
)

// dataPathEnv overrides Config.DataPath (benchmarks).
const dataPathEnv = "WEFT_WG_DATAPATH"

// dataPathOf is the data path to run: WEFT_WG_DATAPATH if set, else
// cfg.DataPath, "" meaning DataPathInline.
func dataPathOf(cfg Config) (string, error) {
	dp, from := cfg.DataPath, "Config.DataPath"
	if s := os.Getenv(dataPathEnv); s != "" {
		dp, from = s, dataPathEnv
	}
	switch dp {
	case "", DataPathInline:
		return DataPathInline, nil
	case DataPathQueued:
		return DataPathQueued, nil
	}
	return "", fmt.Errorf("overlay: %s %q: want %q or %q", from, dp, DataPathInline, DataPathQueued)
}
