// Package bench holds weft's `go test -bench` suites. They run on the netns
// lab (root and /dev/net/tun), real agents and real kernels; the traffic is
// made by this process with sockets created inside the namespaces.
//
//	go test -run '^$' -bench Throughput -benchtime 3s ./bench/
package bench

import (
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

var weftBin string

func TestMain(m *testing.M) { os.Exit(lab.RunWithWeft(m, &weftBin)) }

// perOp is what one benchmark iteration sends.
const perOp = 32 << 20

// BenchmarkThroughput measures one TCP stream: plain veth between two
// namespaces (the ceiling), then weft container to container across two
// cells (WireGuard, policy on, one rule allowing the flow). Both report
// Gbit/s; weft also reports its ratio to veth measured in the same run.
func BenchmarkThroughput(b *testing.B) {
	lab.RequireRoot(b)

	nsA, nsB := vethPair(b)

	l := lab.Setup(b, lab.Config{Cells: 2, WeftBin: weftBin})
	a, c, ipB := twoContainers(b, l, "benchA", "benchB", "5201")

	var vethGbps float64
	b.Run("veth", func(b *testing.B) {
		vethGbps = tcpStream(b, nsA, nsB, "198.18.0.202:5201")
	})
	b.Run("weft", func(b *testing.B) {
		g := tcpStream(b, a, c, netip.AddrPortFrom(ipB, 5201).String())
		if vethGbps > 0 {
			b.ReportMetric(g/vethGbps, "x-veth")
		}
	})
}

// tcpStream sends b.N*perOp bytes over one TCP connection from namespace
// client to a sink in namespace server and reports Gbit/s of bytes the sink
// received.
func tcpStream(b *testing.B, client, server, addr string) float64 {
	port := addr[strings.LastIndexByte(addr, ':'):]
	ln, err := lab.ListenIn(server, "tcp", port)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var received atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		n, _ := io.Copy(io.Discard, conn)
		received.Store(n)
	}()
	conn := dialRetry(b, client, addr)
	buf := make([]byte, 256<<10)
	b.SetBytes(perOp)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		for sent := 0; sent < perOp; sent += len(buf) {
			if _, err := conn.Write(buf); err != nil {
				b.Fatalf("write to %s: %v", addr, err)
			}
		}
	}
	conn.(*net.TCPConn).CloseWrite()
	<-done
	elapsed := time.Since(start)
	b.StopTimer()
	conn.Close()
	want := int64(b.N) * perOp
	if got := received.Load(); got != want {
		b.Fatalf("sink received %d bytes, sent %d", got, want)
	}
	gbps := float64(want) * 8 / elapsed.Seconds() / 1e9
	b.ReportMetric(gbps, "Gbit/s")
	return gbps
}

// dialRetry dials addr from namespace ns; the first attempts may race with
// policy propagation.
func dialRetry(b *testing.B, ns, addr string) net.Conn {
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := lab.DialIn(ns, "tcp", addr, 2*time.Second)
		if err == nil {
			return conn
		}
		if time.Now().After(deadline) {
			b.Fatalf("dial %s from %s: %v", addr, ns, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
