package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// TestPartialTCPChecksums: between two weft cells the TCP segments split off
// a GSO packet leave with partial checksums (docs/performance.md, "TCP
// checksums between weft cells"), and bulk transfers arrive intact both
// ways. A cell started with --partial-tcp-checksums=false announces
// nothing, is sent full checksums, and the transfers still arrive intact.
func TestPartialTCPChecksums(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	ctA, ctB := l.Name("bulkA"), l.Name("bulkB")
	ipA, err := l.CreateContainer(1, "bulka", ctA)
	if err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "bulkb", ctB)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]string{{"bulka", "bulkb"}, {"bulkb", "bulka"}} {
		if out, err := l.Weft(1, "add-network-policy", p[0], p[1], "--protocol", "tcp", "--port", "9000"); err != nil {
			t.Fatalf("add-network-policy %v: %v %s", p, err, out)
		}
	}
	// partialTo reports what cell i's status says of itself and of its
	// one peer.
	partialTo := func(st lab.Status) (self, peer bool) {
		var s struct {
			Partial bool `json:"partial_tcp_checksums"`
		}
		json.Unmarshal(st.Raw, &s)
		if len(st.Peers) != 1 {
			return s.Partial, false
		}
		var p struct {
			Partial bool `json:"partial_tcp_checksum"`
		}
		json.Unmarshal(st.Peers[0].Raw, &p)
		return s.Partial, p.Partial
	}
	for i := 1; i <= 2; i++ {
		waitStatus(t, l, i, 10*time.Second, "partial TCP checksums toward the peer", func(st lab.Status) bool {
			self, peer := partialTo(st)
			return self && peer
		})
	}
	// The table of weft status says so too.
	if out, err := l.Weft(1, "status"); err != nil || !strings.Contains(out, "tcp sums:   partial accepted") || !strings.Contains(out, "partial\n") {
		t.Errorf("weft status on cell 1: %v\n%s", err, out)
	}
	bulk(t, ctA, ctB, netip.AddrPortFrom(ipB, 9000), 64<<20)
	bulk(t, ctB, ctA, netip.AddrPortFrom(ipA, 9000), 64<<20)
	// The containers' kernels found no bad checksum: the segments left
	// partial were handed to them as CHECKSUM_PARTIAL.
	before := map[string]uint64{}
	for _, ns := range []string{ctA, ctB} {
		before[ns] = tcpInCsumErrors(t, ns)
		if before[ns] != 0 {
			t.Errorf("%s: %d TCP segments with bad checksums", ns, before[ns])
		}
	}

	// Cell 2 without: it verifies TCP checksums as upstream wireguard-go
	// does, so cell 1 must not leave them partial toward it (an older
	// weft cell is the same); nor does cell 2 toward cell 1.
	if err := l.StartCellWith(2, nil, "--partial-tcp-checksums=false"); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, l, 1, 10*time.Second, "full TCP checksums toward cell 2", func(st lab.Status) bool {
		self, peer := partialTo(st)
		return self && len(st.Peers) == 1 && !peer
	})
	waitStatus(t, l, 2, 10*time.Second, "cell 2 announces nothing", func(st lab.Status) bool {
		self, peer := partialTo(st)
		return !self && !peer && len(st.Peers) == 1
	})
	if out, err := l.Weft(2, "status"); err != nil || !strings.Contains(out, "tcp sums:   full (verified)") || !strings.Contains(out, "full\n") {
		t.Errorf("weft status on cell 2: %v\n%s", err, out)
	}
	bulk(t, ctA, ctB, netip.AddrPortFrom(ipB, 9000), 64<<20)
	bulk(t, ctB, ctA, netip.AddrPortFrom(ipA, 9000), 64<<20)
	for _, ns := range []string{ctA, ctB} {
		if n := tcpInCsumErrors(t, ns) - before[ns]; n != 0 {
			t.Errorf("%s: %d more TCP segments with bad checksums: a partial checksum went to a cell that verifies", ns, n)
		}
	}
}

// tcpInCsumErrors is the kernel's count of TCP segments with a bad checksum
// in namespace ns (Tcp InCsumErrors of /proc/net/snmp).
func tcpInCsumErrors(t *testing.T, ns string) uint64 {
	t.Helper()
	n, ok := procCounters(t, ns, "snmp", "Tcp:")["InCsumErrors"]
	if !ok {
		t.Fatalf("%s: no Tcp InCsumErrors in /proc/net/snmp", ns)
	}
	return n
}

// bulk sends n pseudo-random bytes over one TCP connection from namespace
// client to a sink at dst in namespace server and checks that the sink
// received exactly them (SHA-256).
func bulk(t *testing.T, client, server string, dst netip.AddrPort, n int64) {
	t.Helper()
	ln, err := lab.ListenIn(server, "tcp", fmt.Sprintf(":%d", dst.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(bulkTimeout(n)))
		h := sha256.New()
		k, err := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = k, err
		got <- r
	}()
	var c net.Conn
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err = lab.DialIn(client, "tcp", dst.String(), time.Second)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dial %v from %s: %v", dst, client, err)
	}
	c.SetDeadline(time.Now().Add(bulkTimeout(n)))
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{byte(n), 1}), n), h)
	start := time.Now()
	if _, err := io.Copy(c, src); err != nil {
		t.Fatalf("send %d bytes to %v: %v", n, dst, err)
	}
	c.(*net.TCPConn).CloseWrite()
	r := <-got
	c.Close()
	if r.err != nil || r.n != n || !bytes.Equal(r.sum[:], h.Sum(nil)) {
		t.Fatalf("%s -> %v: sink got %d of %d bytes (err %v), sha256 %x, sent %x", client, dst, r.n, n, r.err, r.sum, h.Sum(nil))
	}
	t.Logf("%s -> %v: %d MB intact in %v", client, dst, n>>20, time.Since(start).Round(time.Millisecond))
}

// bulkTimeout bounds a transfer of n bytes: 30 s, and 1 s more for each
// 16 MB beyond 64 MB (1 GB: 90 s, about 100 Mbit/s).
func bulkTimeout(n int64) time.Duration {
	d := 30 * time.Second
	if n > 64<<20 {
		d += time.Duration((n-64<<20)>>24) * time.Second
	}
	return d
}
