package bench

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/lab"
)

// TestInteropUpstreamWireGuard runs weft's wireguard-go copy with the data
// path weft cells run (run to completion; bench/internal/weftwg) against
// upstream wireguard-go (bench/internal/plainwg, built against the
// upstream module), each on a real TUN with offloads in a namespace of its
// own, over a veth pair. The weft side starts the first handshake (UDP
// from its side), then both sides carry UDP datagrams of every size and a
// TCP stream each way (GSO and GRO batches), checked byte for byte.
func TestInteropUpstreamWireGuard(t *testing.T) {
	lab.RequireRoot(t)
	run := lab.RunPrefix()
	nsU, nsW := run+"-iu", run+"-iw" // upstream, weft
	cleanup, err := lab.NewVethPair(nsU, nsW,
		netip.MustParsePrefix("198.18.0.211/24"), netip.MustParsePrefix("198.18.0.212/24"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)

	dir := t.TempDir()
	plainBin, weftBin := filepath.Join(dir, "plainwg"), filepath.Join(dir, "weftwg")
	build := exec.Command("go", "build", "-o", plainBin, ".")
	build.Dir = "internal/plainwg" // a module of its own: upstream wireguard-go
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build plainwg: %v: %s", err, out)
	}
	if out, err := exec.Command("go", "build", "-o", weftBin, "./internal/weftwg").CombinedOutput(); err != nil {
		t.Fatalf("build weftwg: %v: %s", err, out)
	}

	kU, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	kW, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	ipU, ipW := netip.MustParseAddr("10.255.251.1"), netip.MustParseAddr("10.255.251.2")
	startWG(t, nsU, plainBin, []string{"-iface", run + "iu", "-addr", ipU.String() + "/24"},
		kU, kW.PublicKey(), "198.18.0.212", ipW, "")
	startWG(t, nsW, weftBin, []string{"-iface", run + "iw", "-addr", ipW.String() + "/24", "-datapath", "inline"},
		kW, kU.PublicKey(), "198.18.0.211", ipU, "inline=true")

	t.Run("udp", func(t *testing.T) { udpEcho(t, nsW, nsU, ipU) })
	t.Run("tcp", func(t *testing.T) { tcpBothWays(t, nsU, nsW, ipW, 48<<20) })
}

// startWG starts a WireGuard process (plainwg or weftwg) in ns, peered with
// peer at underlay address peerUnderlay, whose TUN address is peerTUN, and
// waits for it to print "ready" (and want, if not empty). It returns the
// process's PID.
func startWG(t testing.TB, ns, bin string, args []string, key, peer wgtypes.Key, peerUnderlay string, peerTUN netip.Addr, want string) int {
	t.Helper()
	cmd := lab.ExecIn(ns, bin, append(args, "-mtu", "1420")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdin = strings.NewReader(fmt.Sprintf(
		"private_key=%s\nlisten_port=51820\npublic_key=%s\nendpoint=%s:51820\nallowed_ip=%s/32\n",
		hex.EncodeToString(key[:]), hex.EncodeToString(peer[:]), peerUnderlay, peerTUN))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	line := make([]byte, 64)
	n, err := stdout.Read(line)
	got := strings.TrimSpace(string(line[:n]))
	if err != nil || !strings.HasPrefix(got, "ready") || !strings.Contains(got, want) {
		t.Fatalf("%s in %s did not start (want %q): %q %v", filepath.Base(bin), ns, want, got, err)
	}
	t.Logf("%s in %s: %s", filepath.Base(bin), ns, got)
	go io.Copy(io.Discard, stdout)
	return cmd.Process.Pid
}

// udpEcho sends datagrams of every size from 0 to 1392 bytes (the most
// that fits the 1420-byte MTU) from nsFrom to an echo server in nsTo and
// checks each echo. A lost datagram is sent again, at most 5 times.
func udpEcho(t *testing.T, nsFrom, nsTo string, to netip.Addr) {
	srv, err := lab.ListenPacketIn(nsTo, "udp4", netip.AddrPortFrom(to, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	c, err := lab.DialIn(nsFrom, "udp4", netip.AddrPortFrom(to, 7000).String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 2048)
	resent := 0
	for size := 0; size <= 1392; size++ {
		msg := make([]byte, size)
		for i := range msg {
			msg[i] = byte(rng.Uint32())
		}
		if size >= 2 {
			binary.BigEndian.PutUint16(msg, uint16(size))
		}
		ok := false
		for try := 0; try < 5 && !ok; try++ {
			if try > 0 {
				resent++
			}
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			// The first datagram waits for the handshake.
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			for {
				n, err := c.Read(buf)
				if err != nil {
					break // timeout: send again
				}
				if bytes.Equal(buf[:n], msg) {
					ok = true
					break
				}
				// A late echo of an earlier try of an earlier size.
			}
		}
		if !ok {
			t.Fatalf("no echo of the %d-byte datagram after 5 tries", size)
		}
	}
	t.Logf("1393 datagrams echoed, %d sent again", resent)
}

// tcpBothWays sends n random bytes over TCP from nsFrom to a server at to
// in nsTo, which sends n other bytes back at the same time; each side
// checks the SHA-256 of what it received against the other's.
func tcpBothWays(t *testing.T, nsFrom, nsTo string, to netip.Addr, n int64) {
	ln, err := lab.ListenIn(nsTo, "tcp4", netip.AddrPortFrom(to, 7001).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		sum [32]byte
		err error
	}
	// exchange sends n bytes from seed on c while it reads n bytes; it
	// returns the SHA-256 of what it read.
	exchange := func(c net.Conn, seed uint64) result {
		sent := make(chan error, 1)
		go func() {
			_, err := io.Copy(c, io.LimitReader(newRandReader(seed), n))
			sent <- err
		}()
		h := sha256.New()
		got, err := io.Copy(h, io.LimitReader(c, n))
		if err == nil && got != n {
			err = fmt.Errorf("read %d of %d bytes", got, n)
		}
		if serr := <-sent; err == nil {
			err = serr
		}
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.err = err
		return r
	}
	srvDone := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvDone <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		srvDone <- exchange(c, 2)
	}()
	c, err := lab.DialIn(nsFrom, "tcp4", netip.AddrPortFrom(to, 7001).String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	start := time.Now()
	cli := exchange(c, 1)
	srv := <-srvDone
	if cli.err != nil || srv.err != nil {
		t.Fatalf("client: %v; server: %v", cli.err, srv.err)
	}
	want := func(seed uint64) [32]byte {
		h := sha256.New()
		io.Copy(h, io.LimitReader(newRandReader(seed), n))
		var s [32]byte
		copy(s[:], h.Sum(nil))
		return s
	}
	if srv.sum != want(1) {
		t.Errorf("%s -> %s: the server received other bytes than the client sent", nsFrom, nsTo)
	}
	if cli.sum != want(2) {
		t.Errorf("%s -> %s: the client received other bytes than the server sent", nsTo, nsFrom)
	}
	t.Logf("%d MiB each way in %v", n>>20, time.Since(start).Round(time.Millisecond))
}

// randReader is a reproducible stream of pseudo-random bytes.
type randReader struct{ r *rand.ChaCha8 }

func newRandReader(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return randReader{rand.NewChaCha8(s)}
}

func (r randReader) Read(p []byte) (int, error) { return r.r.Read(p) }
