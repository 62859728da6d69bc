// Command udpfloor measures what a WireGuard data path's underlay costs on
// its own: WireGuard-sized UDP datagrams through wireguard-go's
// conn.StdNetBind (UDP GSO on send, GRO on receive, batches of 128), with
// no TUN, no crypto and no WireGuard. The ladder's ceiling rung runs a
// receiver and a sender in two namespaces (start each with `nsenter
// --net=/run/netns/NS`).
//
//	udpfloor -listen 51821                     # receive and count
//	udpfloor -to 198.18.0.202:51821 -size 1452  # send as fast as it can
//
// Each prints "ready" once it runs, and then, for every line it reads on
// stdin, one line "BYTES CPU_NS": the datagram payload bytes it has sent or
// received so far and the CPU time (user + system) its process has used
// so far. It exits when stdin closes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"sync/atomic"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
)

func main() {
	listen := flag.Int("listen", 0, "receive on this UDP port")
	to := flag.String("to", "", "send to this address:port")
	size := flag.Int("size", 1452, "datagram payload bytes (1452: a WireGuard packet of a 1420-byte MTU)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "udpfloor:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	var bytes atomic.Int64
	var err error
	switch {
	case *listen > 0 && *to == "":
		err = receive(uint16(*listen), &bytes)
	case *to != "" && *listen == 0:
		err = send(*to, *size, &bytes)
	default:
		err = fmt.Errorf("give one of -listen and -to")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "udpfloor:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Println(bytes.Load(), cpuNanos())
	}
}

// receive opens a bind on port and counts what its receive functions get.
func receive(port uint16, bytes *atomic.Int64) error {
	bind := conn.NewDefaultBind()
	fns, _, err := bind.Open(port)
	if err != nil {
		return err
	}
	for _, fn := range fns {
		go func() {
			n := bind.BatchSize()
			bufs, sizes, eps := make([][]byte, n), make([]int, n), make([]conn.Endpoint, n)
			for i := range bufs {
				bufs[i] = make([]byte, 65536)
			}
			for {
				k, err := fn(bufs, sizes, eps)
				if err != nil {
					return
				}
				var got int
				for _, s := range sizes[:k] {
					got += s
				}
				bytes.Add(int64(got))
			}
		}()
	}
	return nil
}

// send sends batches of size-byte datagrams to addr as fast as the bind
// takes them.
func send(addr string, size int, bytes *atomic.Int64) error {
	bind := conn.NewDefaultBind()
	if _, _, err := bind.Open(0); err != nil {
		return err
	}
	ep, err := bind.ParseEndpoint(addr)
	if err != nil {
		return err
	}
	// Room after each datagram, as wireguard-go's message buffers have:
	// the bind coalesces a batch for UDP GSO by appending datagrams to the
	// first buffer of each run, and without room it sends them one by one.
	bufs := make([][]byte, bind.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, size, 65536)
	}
	go func() {
		for {
			if err := bind.Send(bufs, ep); err != nil {
				continue // ECONNREFUSED before the receiver is up, ENOBUFS
			}
			bytes.Add(int64(len(bufs) * size))
		}
	}()
	return nil
}

// cpuNanos is the CPU time the process has used, user and system.
func cpuNanos() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
