package overlay

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.zx2c4.com/wireguard/tun"
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

// Queues (Config.Queues). The kernel gives each TUN queue the packets of
// some container pairs (by their addresses: tun's steering program) and
// each socket the datagrams of some peers (by source address and port):
// one pair's packets, and one peer's traffic inbound, stay on one queue,
// in order, with one core's worth of crypto; many pairs and peers spread
// over the cores.
const (
	// MaxQueues bounds the default: each queue is a goroutine and a
	// batch of message buffers (128 x 64 KiB of address space, pages
	// touched only as packets arrive).
	MaxQueues = 8
	// minCPUsForQueues: on a cell of fewer CPUs the default is one
	// queue. There, the TUN reader and the receiver already have a core
	// each, and a second queue measured 0.86 of one at UDP 64 B (14%
	// more CPU a packet: the steering program, the mq qdisc), TCP 0.97
	// and 1.07 (BenchmarkAB, 6 rounds, docs/performance.md).
	minCPUsForQueues = 3
	queuesEnv        = "WEFT_TUN_QUEUES"
)

// queuesOf is the number of TUN queues and sockets per family to open:
// WEFT_TUN_QUEUES if set, else cfg.Queues, 0 meaning one per CPU up to
// MaxQueues on a cell of minCPUsForQueues CPUs or more, else one; always
// 1 on the queued data path (upstream's one reader) and with the water
// backend (no IFF_MULTI_QUEUE there).
func queuesOf(cfg Config, dataPath string) (int, error) {
	n, from := cfg.Queues, "Config.Queues"
	if s := os.Getenv(queuesEnv); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil {
			return 0, fmt.Errorf("overlay: %s %q: want a number of queues", queuesEnv, s)
		}
		n, from = v, queuesEnv
	}
	if n < 0 || n > 64 {
		return 0, fmt.Errorf("overlay: %s %d: want 0 (one per CPU) to 64 queues", from, n)
	}
	if n == 0 {
		n = defaultQueues(runtime.NumCPU())
	}
	if dataPath != DataPathInline || cfg.TUNBackend == TUNWater {
		n = 1
	}
	return n, nil
}

// moreQueues opens the n-1 queues of dev after its first (n: the queues
// createTUN made dev for).
func moreQueues(dev tun.Device, n int) ([]tun.Device, error) {
	var more []tun.Device
	for range n - 1 {
		q, err := tun.NewQueue(dev)
		if err != nil {
			for _, q := range more {
				q.Close()
			}
			return nil, err
		}
		more = append(more, q)
	}
	return more, nil
}

// defaultQueues is the number of queues for a cell of cpus CPUs.
func defaultQueues(cpus int) int {
	if cpus < minCPUsForQueues {
		return 1
	}
	return min(cpus, MaxQueues)
}
