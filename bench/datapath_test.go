package bench

import (
	"bufio"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/lab"
)

// BenchmarkDataPath compares wireguard-go data paths with nothing else in
// the way: two processes on real TUNs with offloads in two namespaces over
// a veth pair, traffic between the TUN addresses, as rung b of the ladder.
// Sub-benchmarks, taken in turn for -datapath.rounds rounds so that the
// machine's drift falls on all alike:
//
//   - upstream: plainwg (upstream wireguard-go), rung b;
//   - queued: weftwg -datapath queued (weft's copy, upstream's data path);
//   - inline: weftwg -datapath inline (run to completion, as weft cells).
//
// Each reports TCP one stream (Gbit/s, 3 s), UDP 64-byte packets/s
// received (2 s, one sender blasting) and the larger peak RSS (VmHWM) of
// the two processes.
//
//	go test -run '^$' -bench '^BenchmarkDataPath$' -benchtime 1x ./bench/
func BenchmarkDataPath(b *testing.B) {
	lab.RequireRoot(b)
	dir := b.TempDir()
	bins := map[string]string{"upstream": filepath.Join(dir, "plainwg"), "weftwg": filepath.Join(dir, "weftwg")}
	build := exec.Command("go", "build", "-o", bins["upstream"], ".")
	build.Dir = "internal/plainwg"
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build plainwg: %v: %s", err, out)
	}
	if out, err := exec.Command("go", "build", "-o", bins["weftwg"], "./internal/weftwg").CombinedOutput(); err != nil {
		b.Fatalf("build weftwg: %v: %s", err, out)
	}
	results := map[string]map[string][]float64{}
	for r := range *dataPathRounds {
		for _, mode := range []string{"upstream", "queued", "inline"} {
			m := measureDataPath(b, bins, mode, r)
			if results[mode] == nil {
				results[mode] = map[string][]float64{}
			}
			for k, v := range m {
				results[mode][k] = append(results[mode][k], v)
			}
			b.Logf("round %d %s: %v", r, mode, m)
		}
	}
	for _, mode := range []string{"upstream", "queued", "inline"} {
		b.Run(mode, func(b *testing.B) {
			for k, vs := range results[mode] {
				b.ReportMetric(medianOf(vs), k)
				if up := results["upstream"][k]; mode != "upstream" && medianOf(up) > 0 {
					b.ReportMetric(medianOf(vs)/medianOf(up), "x-upstream-"+k)
				}
			}
		})
	}
}

var dataPathRounds = flag.Int("datapath.rounds", 3, "BenchmarkDataPath: rounds of the three data paths in turn")

// measureDataPath starts a pair of mode's processes on a fresh veth pair
// and measures it.
func measureDataPath(b *testing.B, bins map[string]string, mode string, round int) map[string]float64 {
	var m map[string]float64
	b.Run(fmt.Sprintf("round%d-%s", round, mode), func(b *testing.B) {
		run := lab.RunPrefix()
		nsA, nsB := run+"-da", run+"-db"
		cleanup, err := lab.NewVethPair(nsA, nsB,
			netip.MustParsePrefix("198.18.0.221/24"), netip.MustParsePrefix("198.18.0.222/24"))
		if err != nil {
			b.Fatal(err)
		}
		defer cleanup()
		kA, _ := wgtypes.GeneratePrivateKey()
		kB, _ := wgtypes.GeneratePrivateKey()
		ipA, ipB := netip.MustParseAddr("10.255.252.1"), netip.MustParseAddr("10.255.252.2")
		bin, extra := bins["weftwg"], []string{"-datapath", mode}
		if mode == "upstream" {
			bin, extra = bins["upstream"], nil
		}
		pidA := startWG(b, nsA, bin, append([]string{"-iface", run + "da", "-addr", ipA.String() + "/24"}, extra...),
			kA, kB.PublicKey(), "198.18.0.222", ipB, "")
		pidB := startWG(b, nsB, bin, append([]string{"-iface", run + "db", "-addr", ipB.String() + "/24"}, extra...),
			kB, kA.PublicKey(), "198.18.0.221", ipA, "")
		m = map[string]float64{}
		gbps, err := tcpOneStream(nsA, nsB, ipB, 3*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		m["Gbit/s-tcp1"] = gbps
		kpps, err := udpBlast(nsA, nsB, ipB, 64, 2*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		m["kpps-udp64"] = kpps
		m["MB-rss-peak"] = float64(max(vmHWM(pidA), vmHWM(pidB))) / (1 << 20)
	})
	return m
}

// tcpOneStream sends from nsFrom to to:7100 in nsTo for d after a 0.5 s
// warm-up and returns the Gbit/s received.
func tcpOneStream(nsFrom, nsTo string, to netip.Addr, d time.Duration) (float64, error) {
	ln, err := lab.ListenIn(nsTo, "tcp4", netip.AddrPortFrom(to, 7100).String())
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	var received atomic.Int64
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			received.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	c, err := lab.DialIn(nsFrom, "tcp4", netip.AddrPortFrom(to, 7100).String(), 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	stop := make(chan struct{})
	go func() {
		buf := make([]byte, 256<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	defer close(stop)
	time.Sleep(500 * time.Millisecond) // warm-up: a measurement window, not synchronisation
	start, n0 := time.Now(), received.Load()
	time.Sleep(d)
	n1, el := received.Load(), time.Since(start)
	return float64(n1-n0) * 8 / el.Seconds() / 1e9, nil
}

// udpBlast sends size-byte IP packets (UDP payload size-28) from nsFrom to
// to:7101 in nsTo as fast as one sender can for d and returns the
// thousands of packets per second received.
func udpBlast(nsFrom, nsTo string, to netip.Addr, size int, d time.Duration) (float64, error) {
	pc, err := lab.ListenPacketIn(nsTo, "udp4", netip.AddrPortFrom(to, 7101).String())
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	var received atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			received.Add(1)
		}
	}()
	c, err := lab.DialIn(nsFrom, "udp4", netip.AddrPortFrom(to, 7101).String(), 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	msg := make([]byte, size-28)
	deadline := time.Now().Add(d)
	start, n0 := time.Now(), received.Load()
	for time.Now().Before(deadline) {
		c.Write(msg) // ENOBUFS and the like: the sender is faster than the path
	}
	time.Sleep(200 * time.Millisecond) // the last packets in flight arrive; the same for every mode
	return float64(received.Load()-n0) / time.Since(start).Seconds() / 1e3, nil
}

// vmHWM is the peak RSS of process pid in bytes, 0 if unknown.
func vmHWM(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
