package bench

// The benchmark ladder (issue 5): one run, one lab, rung by rung from the
// kernel's own veth up to weft with a large policy loaded.
//
//	go test -run '^$' -bench Ladder -benchtime 1x ./bench/ | go run ./bench/cmd/benchtable
//
// Rungs:
//
//	a  veth between two namespaces (the ceiling)
//	b  plain wireguard-go between two namespaces, no weft code (bench/internal/plainwg)
//	c  weft, two containers on two cells, policy enforcement off (--policy=off)
//	d  weft, policy on, 10k rules loaded and 100k flows tracked
//	e  weft, two containers on one cell (hair-pin), policy as in d
//	f  weft as in d with the water TUN backend (--tun-backend water)
//	h  weft egress: a container of cell 1 to a host on the underlay through
//	   the cell's NAT (an egress rule), against cell 1's host to the same
//	   host, TCP one stream
//	n  nebula, two containers on two cells as in c and d, firewall on,
//	   offloads on (nebula_test.go; needs -ladder.nebula DIR, else skipped)
//
// and d2-paired-b-c-d: rungs b, d and c taken in turn, -ladder.pairs
// times each (TCP one and four streams), reported as the medians and their
// ratios; and d3-toggled-c-d: d's agents with policy enforcement switched
// off (c) and on (d) in turn, every half second, under one running TCP
// test, reported as the two throughputs and their ratio d/c.
//
// Each rung measures: one TCP stream and four (Gbit/s received, 0.5 s
// warm-up then 3 s), UDP packets per second received at 64- and 1400-byte
// IP packets (2 s each), the machine's busy cores during each, also per
// Gbit/s and per million packets per second, and for b, d and n a UDP
// ping-pong round trip (p50, p99) and TCP request/response (rr_test.go:
// 1-byte transactions per second on one connection and on 32, new
// connections per second). Every Gbit/s, packet and transaction rate is
// also reported as a ratio to rung b ("x-b"). Weft rungs report the
// agents' RSS (VmRSS, VmHWM of the busier of the two agents). -ladder.profile DIR writes the agents' CPU profiles of
// rungs c and d (single TCP stream), and their block, mutex and heap
// profiles after it, into DIR.

import (
	"bufio"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/internal/lab"
)

var (
	ladderProfile   = flag.String("ladder.profile", "", "write agent CPU/block profiles of rungs c and d into this directory")
	ladderTCPTime   = flag.Duration("ladder.tcptime", 3*time.Second, "measuring time of each TCP test (after 0.5 s warm-up)")
	ladderUDPTime   = flag.Duration("ladder.udptime", 2*time.Second, "measuring time of each UDP test")
	ladderRules     = flag.Int("ladder.rules", 10000, "rules loaded for rungs d-f")
	ladderFlows     = flag.Int("ladder.flows", 100000, "flows tracked for rungs d-f")
	ladderAgentEnv  = flag.String("ladder.agentenv", "", "comma-separated K=V environment for the weft agents (e.g. GOGC=200)")
	ladderWeft      = flag.String("ladder.weft", "", "run this weft binary instead of the one built from the tree (before/after comparisons)")
	ladderAgentArgs = flag.String("ladder.agentargs", "", "space-separated extra flags of the weft agents (e.g. --memory-limit=32)")
	ladderPairs     = flag.Int("ladder.pairs", 3, "rounds of TCP tests of rungs b, d and c in turn for d2-paired (0: skip it)")
	ladderToggles   = flag.Int("ladder.toggles", 24, "blocks of four half-second phases (policy on, off, off, on) under one running TCP test for d3-toggled (0: skip it)")
)

const (
	warmup   = 500 * time.Millisecond
	tcpPort  = 5201 // tcp1 uses 5201, tcp4 5202
	udpPort  = 5301 // udp64 5301, udp1400 5302, ping-pong 5303
	flowBase = 20000
	pprofAt  = "127.0.0.1:6060"
)

// rungResult holds what the ratios to rung b need.
type rungResult map[string]float64

func BenchmarkLadder(b *testing.B) {
	lab.RequireRoot(b)
	base := rungResult{}
	idle := sampleBusy(b, time.Second) // the machine's own load, for rung g

	// The veth pair of rung a, also the underlay of rung b.
	nsA, nsB := vethPair(b)

	// (b) plain wireguard-go over the veth pair.
	wgB := netip.MustParseAddr("10.255.250.2")
	if err := startPlainWG(b, nsA, nsB); err != nil {
		b.Fatal(err)
	}
	b.Run("b-wireguard-go", func(b *testing.B) {
		r := measureRung(b, nil, nsA, nsB, wgB, true, "b")
		for k, v := range r {
			base[k] = v
		}
	})
	// (a) measured after (b) so that it can report its ratio to it.
	b.Run("a-veth", func(b *testing.B) {
		measureRungRatio(b, base, nsA, nsB, netip.MustParseAddr("198.18.0.202"), false)
	})
	// (n) nebula between two containers on two cells, after b for its
	// ratios and next to it in time.
	b.Run("n-nebula", func(b *testing.B) {
		if *ladderNebula == "" {
			b.Skip("rung n needs -ladder.nebula DIR, DIR holding nebula and nebula-cert built from github.com/slackhq/nebula at or after edc3c5e0 (docs/performance.md)")
		}
		n := startNebula(b, *ladderNebula, "aes")
		measureRungRatioHook(b, base, n.ctA, n.ctB, n.ipB, true, nil, "n")
		var peak int64
		for _, pid := range n.pids {
			peak = max(peak, procMem(pid).hwm)
		}
		b.ReportMetric(float64(peak)/(1<<20), "MB-rss-peak")
	})
	// (m) rung n with WireGuard's cipher, ChaCha20-Poly1305, in place of
	// nebula's default AES-GCM: what the cipher costs nebula on this
	// machine.
	b.Run("m-nebula-chachapoly", func(b *testing.B) {
		if *ladderNebula == "" {
			b.Skip("rung m needs -ladder.nebula DIR (see rung n)")
		}
		n := startNebula(b, *ladderNebula, "chachapoly")
		measureRungRatioHook(b, base, n.ctA, n.ctB, n.ipB, true, nil, "m")
	})

	// One lab for the weft rungs: agents are restarted with other flags.
	bin := weftBin
	if *ladderWeft != "" {
		bin = *ladderWeft
	}
	l := lab.Setup(b, lab.Config{Cells: 2, WeftBin: bin})
	ctA, ctB, ctC := l.Name("ladA"), l.Name("ladB"), l.Name("ladC")
	if _, err := l.CreateContainer(1, "ladA", ctA); err != nil {
		b.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "ladB", ctB)
	if err != nil {
		b.Fatal(err)
	}
	ipC, err := l.CreateContainer(1, "ladC", ctC)
	if err != nil {
		b.Fatal(err)
	}
	nrules, err := loadRules(l, *ladderRules)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("policy: %d rules", nrules)
	var env []string
	if *ladderAgentEnv != "" {
		env = strings.Split(*ladderAgentEnv, ",")
	}
	restart := func(b *testing.B, args ...string) {
		if *ladderProfile != "" {
			args = append(args, "--pprof-addr", pprofAt)
		}
		args = append(args, memArgs()...)
		args = append(args, strings.Fields(*ladderAgentArgs)...)
		for i := 1; i <= 2; i++ {
			if err := l.StartCellWith(i, env, args...); err != nil {
				b.Fatal(err)
			}
		}
		waitPeers(b, l)
	}
	// settle gives restarted agents the traffic d's get from loadFlows
	// before they are measured. Right after a restart of both agents the
	// first WireGuard handshake can take a second (the first cell's
	// initiation reaches the second before it knows the first, and the
	// second starts its own KeepaliveDelay later, see overlay.initiates),
	// a TCP stream opened meanwhile starts late and ramps up, and the
	// agents are still exchanging their full state (the 10k rules) over
	// the mesh. Measured fresh, c's single stream ran with 1.1-1.4 cores
	// busy against d's 1.8, and d/c said nothing about the policy.
	settle := func(b *testing.B) { sendFlows(b, l, ctA, ctB, ipB, *ladderFlows, false) }

	b.Run("c-weft-policy-off", func(b *testing.B) {
		restart(b, "--policy=off")
		start, idle := idleMem(b, l)
		b.ReportMetric(float64(start.rss)/(1<<20), "MB-rss-start")
		b.ReportMetric(float64(idle.rss)/(1<<20), "MB-rss-idle")
		settle(b)
		measureRungProfiled(b, l, base, ctA, ctB, ipB, false, "c")
		m := agentMem(l)
		b.ReportMetric(float64(m.hwm)/(1<<20), "MB-rss-peak")
	})
	dReady := false // d2 runs on d's agents, rules and flows
	b.Run("d-weft-10k-rules-100k-flows", func(b *testing.B) {
		restart(b)
		start, idle := idleMem(b, l)
		b.ReportMetric(float64(start.rss)/(1<<20), "MB-rss-start")
		b.ReportMetric(float64(idle.rss)/(1<<20), "MB-rss-idle")
		logMem(b, l, "d-idle")
		flows := loadFlows(b, l, ctA, ctB, ipB, *ladderFlows)
		b.ReportMetric(float64(agentMem(l).rss)/(1<<20), "MB-rss-flows")
		logMem(b, l, "d-flows")
		memPoint = func(p string) { logMem(b, l, "d-after-"+p) }
		measureRungProfiled(b, l, base, ctA, ctB, ipB, true, "d")
		memPoint = nil
		m := agentMem(l)
		b.ReportMetric(float64(m.hwm)/(1<<20), "MB-rss-peak")
		after := minFlows(b, l)
		b.ReportMetric(float64(min(flows, after)), "flows")
		b.ReportMetric(float64(nrules), "rules")
		dReady = true
	})
	// Rungs b, d and c in turn, d with the same agents, rules and flows as
	// rung d: the drift of this shared machine between separate sub-runs
	// (b alone swings 3.2-3.9 Gbit/s within an hour) cancels in the ratios
	// of the medians, the floor's and d/c's least noisy figures. c needs
	// the agents restarted with --policy=off, and d again with the flows
	// reloaded.
	if *ladderPairs > 0 {
		b.Run("d2-paired-b-c-d", func(b *testing.B) {
			if !dReady {
				b.Skip("needs rung d in the same run")
			}
			streams := []int{1, 4}
			var rb, rc, rd [2][]float64
			// One round: b, d, b, c. c and d each follow a restart, the
			// flow traffic of loadFlows and a b test, and each is taken
			// next to a b test of its own.
			for range *ladderPairs {
				for _, r := range []*[2][]float64{&rd, &rc} {
					for i, n := range streams {
						gb, _ := tcpStreams(b, nsA, nsB, netip.AddrPortFrom(wgB, tcpPort+uint16(i)), n)
						g, _ := tcpStreams(b, ctA, ctB, netip.AddrPortFrom(ipB, tcpPort+uint16(i)), n)
						rb[i], r[i] = append(rb[i], gb), append(r[i], g)
					}
					if r == &rd {
						restart(b, "--policy=off")
						sendFlows(b, l, ctA, ctB, ipB, *ladderFlows, false)
					} else {
						restart(b)
						loadFlows(b, l, ctA, ctB, ipB, *ladderFlows)
					}
				}
			}
			for i, n := range streams {
				mb, mc, md := medianOf(rb[i]), medianOf(rc[i]), medianOf(rd[i])
				b.Logf("tcp%d: b %.2f, c %.2f, d %.2f Gbit/s", n, rb[i], rc[i], rd[i])
				b.ReportMetric(mb, fmt.Sprintf("Gbit/s-b-tcp%d-paired", n))
				b.ReportMetric(mc, fmt.Sprintf("Gbit/s-c-tcp%d-paired", n))
				b.ReportMetric(md, fmt.Sprintf("Gbit/s-d-tcp%d-paired", n))
				b.ReportMetric(md/mb, fmt.Sprintf("x-b-tcp%d-paired", n))
				b.ReportMetric(md/mc, fmt.Sprintf("x-c-tcp%d-paired", n))
			}
		})
	}
	hairpin := 0.0 // rung e's busy cores per Gbit/s, for rung g
	b.Run("e-weft-hairpin", func(b *testing.B) {
		// Same agents as d (policy on, rules and flows loaded).
		r := measureRungRatio(b, base, ctA, ctC, ipC, false)
		b.ReportMetric(float64(agentMem(l).hwm)/(1<<20), "MB-rss-peak")
		hairpin = min((r["cores-tcp1"]-idle)/r["tcp1"], (r["cores-tcp4"]-idle)/r["tcp4"])
	})
	// h: d's agents, rules and flows; container -> underlay host through
	// the guard's egress chain and masquerade (issue 23), against the
	// cell's own namespace -> the same host (no weft on the path) in turn.
	hostIP, host := netip.MustParseAddr("198.18.0.5"), "" // made by h's first run (-count)
	b.Run("h-weft-egress", func(b *testing.B) {
		if host == "" {
			ns, err := l.AddUnderlayHost(hostIP)
			if err != nil {
				b.Fatal(err)
			}
			if out, err := l.Weft(1, "add-egress-rule", "ladA", "--destination", hostIP.String()+"/32", "--protocol", "tcp", "--port", strconv.Itoa(tcpPort)); err != nil {
				b.Fatalf("add-egress-rule: %v %s", err, out)
			}
			host = ns
		}
		dst := netip.AddrPortFrom(hostIP, tcpPort)
		var egress, direct, cores []float64
		for range 3 {
			g, c := tcpStreams(b, ctA, host, dst, 1)
			egress, cores = append(egress, g), append(cores, c)
			g, _ = tcpStreams(b, l.Cells[0].Netns, host, dst, 1)
			direct = append(direct, g)
		}
		e, d := medianOf(egress), medianOf(direct)
		b.ReportMetric(e, "Gbit/s-tcp1")
		b.ReportMetric(d, "Gbit/s-tcp1-cell-host")
		b.ReportMetric(e/d, "x-cell-host-tcp1")
		b.ReportMetric(medianOf(cores), "cores-tcp1")
		if base["tcp1"] > 0 {
			b.ReportMetric(e/base["tcp1"], "x-b-tcp1")
		}
	})
	// Rungs c and d under one running TCP test: d's agents, rules and
	// flows, with policy enforcement switched off (c: the data path of
	// --policy=off) and on (d) in turn through the agents' API, in blocks
	// of on, off, off, on (a linear drift cancels in each block), a 400 ms
	// sample of each phase after 100 ms to settle. Restarts, separate
	// connections and the drift of the machine between sub-runs, which
	// make d/c of the separate rungs swing by ±10%, are gone from this
	// ratio; what is left shows in the spread of the blocks' ratios. The
	// blocks run in rounds of at most 12 (24 s), each after loadFlows, so
	// that at least 100k UDP flows (60 s timeout) stay tracked throughout
	// (up to 300k: each load adds new ones). It runs after rung e, whose
	// agents' peak RSS would otherwise show those.
	if *ladderToggles > 0 {
		b.Run("d3-toggled-c-d", func(b *testing.B) {
			if !dReady {
				b.Skip("needs rung d in the same run")
			}
			var clients []*cellapi.Client
			for _, c := range l.Cells[:2] {
				clients = append(clients, cellapi.NewClient(c.Socket))
			}
			setEnforcement := func(on bool) {
				for i, c := range clients {
					if st, err := c.SetPolicyEnforcement(context.Background(), on); err != nil || st.Enabled != on {
						b.Fatalf("cell %d: policy enforcement %v: %v (enabled %v)", i+1, on, err, st.Enabled)
					}
				}
			}
			defer setEnforcement(true)
			const roundBlocks = 12
			flows := -1
			for i, n := range []int{1, 4} {
				var on, off, blocks []float64
				dst := netip.AddrPortFrom(ipB, tcpPort+uint16(i))
				for len(blocks) < *ladderToggles {
					setEnforcement(true)
					loadFlows(b, l, ctA, ctB, ipB, *ladderFlows)
					todo := min(roundBlocks, *ladderToggles-len(blocks))
					tcpStreamsWith(b, ctA, ctB, dst, n, func(received func() int64) {
						var block [2]float64 // bytes with policy off, on
						for k := range 4 * todo {
							enf := k%4 == 0 || k%4 == 3
							setEnforcement(enf)
							time.Sleep(100 * time.Millisecond)
							r0, t0 := received(), time.Now()
							time.Sleep(400 * time.Millisecond)
							got := float64(received() - r0)
							g := got * 8 / time.Since(t0).Seconds() / 1e9
							if enf {
								on, block[1] = append(on, g), block[1]+got
							} else {
								off, block[0] = append(off, g), block[0]+got
							}
							if k%4 == 3 {
								blocks, block = append(blocks, block[1]/block[0]), [2]float64{}
							}
						}
					})
					if f := minFlows(b, l); flows < 0 || f < flows {
						flows = f
					}
				}
				mc, md := meanOf(off), meanOf(on)
				mean, se := meanOf(blocks), stdErr(blocks)
				b.Logf("tcp%d: policy off (c) mean %.2f, on (d) mean %.2f Gbit/s over %d phases each; d/c by block %.3f ± %.3f (standard error), min %.3f, max %.3f",
					n, mc, md, len(on), mean, se, slices.Min(blocks), slices.Max(blocks))
				b.ReportMetric(mc, fmt.Sprintf("Gbit/s-c-tcp%d-toggled", n))
				b.ReportMetric(md, fmt.Sprintf("Gbit/s-d-tcp%d-toggled", n))
				b.ReportMetric(md/mc, fmt.Sprintf("x-c-tcp%d-toggled", n))
				b.ReportMetric(se, fmt.Sprintf("x-c-tcp%d-toggled-stderr", n))
			}
			b.ReportMetric(float64(flows), "flows")
		})
	}
	// f: d's agents, rules and flows (loadFlows, which checks the count),
	// on the water backend.
	b.Run("f-weft-water", func(b *testing.B) {
		restart(b, "--tun-backend", "water")
		flows := loadFlows(b, l, ctA, ctB, ipB, *ladderFlows)
		measureRungRatio(b, base, ctA, ctB, ipB, false)
		b.ReportMetric(float64(agentMem(l).hwm)/(1<<20), "MB-rss-peak")
		b.ReportMetric(float64(min(flows, minFlows(b, l))), "flows")
	})
	b.Run("g-ceiling", func(b *testing.B) {
		if hairpin <= 0 || base["tcp1"] == 0 {
			b.Skip("needs rungs b and e in the same run")
		}
		ceiling(b, nsA, nsB, hairpin, base)
	})
}

// ceiling estimates the most any WireGuard data path could carry on this
// machine from the costs, per Gbit/s, of what every one must do: what
// rung e (hair-pin) does, the TCP endpoints, TUN reads and writes of
// super-packets, splitting them and coalescing (its busy cores over its
// throughput, the machine's idle load taken off); less two memory copies,
// which a data path that encrypts straight out of the super-packet and
// decrypts straight into the coalesced one would save; plus the
// ChaCha20-Poly1305 seal and open of every packet, measured here on
// 1420-byte packets; plus WireGuard-sized datagrams through
// wireguard-go's UDP bind (GSO, GRO) over the veth pair, measured by
// udpfloor with nothing else. Each is measured on its own at the cost it
// has here, so the sum is a floor for their combination, and the machine's
// cores divided by it is a ceiling. It reports the ceiling and its ratio
// to rung b, which the bar (1.8) is set against.
func ceiling(b *testing.B, nsA, nsB string, hairpin float64, base rungResult) {
	cpy, crypto := memmoveCost(), cryptoCost(b)
	udp, udpGbps := udpCost(b, nsA, nsB)
	floor := max(hairpin-2*cpy, 0) + crypto + udp
	ncpu := float64(machineBusy(b).ncpu)
	b.Logf("cores per Gbit/s: hair-pin %.3f (less 2 copies of %.4f), crypto %.3f, UDP %.3f (at %.2f Gbit/s); floor %.3f on %.0f cores",
		hairpin, cpy, crypto, udp, udpGbps, floor, ncpu)
	b.ReportMetric(hairpin, "cores-per-Gbps-hairpin")
	b.ReportMetric(crypto, "cores-per-Gbps-crypto")
	b.ReportMetric(udp, "cores-per-Gbps-udp")
	b.ReportMetric(ncpu/floor, "Gbit/s-ceiling")
	b.ReportMetric(ncpu/floor/base["tcp1"], "x-b-ceiling")
}

// sampleBusy returns the machine's busy cores over d.
func sampleBusy(b *testing.B, d time.Duration) float64 {
	t0 := machineBusy(b)
	time.Sleep(d)
	return machineBusy(b).cores(t0)
}

// coresPerGbps is the CPU (in ns) spent on bytes, as busy cores per Gbit/s.
func coresPerGbps(bytes, cpuNanos float64) float64 {
	return cpuNanos / 1e9 / (bytes * 8 / 1e9)
}

// memmoveCost is one copy of 64 KiB buffers, in cores per Gbit/s.
func memmoveCost() float64 {
	src, dst := make([]byte, 64<<10), make([]byte, 64<<10)
	n, t0 := 0, time.Now()
	for time.Since(t0) < 300*time.Millisecond {
		for range 64 {
			copy(dst, src)
		}
		n += 64
	}
	return coresPerGbps(float64(n*len(src)), float64(time.Since(t0)))
}

// cryptoCost is sealing and opening 1420-byte packets with
// ChaCha20-Poly1305 (wireguard-go's AEAD, golang.org/x/crypto), in cores
// per Gbit/s.
func cryptoCost(b *testing.B) float64 {
	aead, err := chacha20poly1305.New(make([]byte, chacha20poly1305.KeySize))
	if err != nil {
		b.Fatal(err)
	}
	pkt := make([]byte, 1420, 1420+aead.Overhead())
	var nonce [chacha20poly1305.NonceSize]byte
	n, t0 := 0, time.Now()
	for time.Since(t0) < 500*time.Millisecond {
		for range 64 {
			sealed := aead.Seal(pkt[:0], nonce[:], pkt, nil)
			if _, err := aead.Open(sealed[:0], nonce[:], sealed, nil); err != nil {
				b.Fatal(err)
			}
			pkt = pkt[:1420]
		}
		n += 64
	}
	return coresPerGbps(float64(n*1420), float64(time.Since(t0)))
}

// udpCost runs udpfloor, a receiver in nsB and a sender in nsA, and
// returns the CPU its two processes spent per Gbit/s (each over the bytes
// it handled: what the receiver drops costs the sender all the same) and
// the Gbit/s received.
func udpCost(b *testing.B, nsA, nsB string) (cost, gbps float64) {
	bin := filepath.Join(b.TempDir(), "udpfloor")
	if out, err := exec.Command("go", "build", "-o", bin, "./internal/udpfloor").CombinedOutput(); err != nil {
		b.Fatalf("build udpfloor: %v: %s", err, out)
	}
	type proc struct {
		in  io.WriteCloser
		out *bufio.Reader
	}
	start := func(ns string, args ...string) proc {
		cmd := lab.ExecIn(ns, bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			in.Close() // udpfloor exits when stdin closes
			cmd.Wait()
		})
		p := proc{in, bufio.NewReader(out)}
		if line, err := p.out.ReadString('\n'); err != nil || line != "ready\n" {
			b.Fatalf("udpfloor %v in %s: %q %v", args, ns, line, err)
		}
		return p
	}
	sample := func(p proc) (bytes, cpu float64) {
		if _, err := io.WriteString(p.in, "?\n"); err != nil {
			b.Fatal(err)
		}
		line, err := p.out.ReadString('\n')
		if _, err2 := fmt.Sscan(line, &bytes, &cpu); err != nil || err2 != nil {
			b.Fatalf("udpfloor: %q: %v %v", line, err, err2)
		}
		return bytes, cpu
	}
	recv := start(nsB, "-listen", "51821")
	send := start(nsA, "-to", "198.18.0.202:51821")
	time.Sleep(warmup)
	rb0, rc0 := sample(recv)
	sb0, sc0 := sample(send)
	t0 := time.Now()
	time.Sleep(*ladderTCPTime)
	rb1, rc1 := sample(recv)
	sb1, sc1 := sample(send)
	el := time.Since(t0)
	if rb1 <= rb0 || sb1 <= sb0 {
		b.Fatalf("udpfloor: received %.0f, sent %.0f bytes", rb1-rb0, sb1-sb0)
	}
	cost = coresPerGbps(sb1-sb0, sc1-sc0) + coresPerGbps(rb1-rb0, rc1-rc0)
	return cost, (rb1 - rb0) * 8 / el.Seconds() / 1e9
}

// measureRungProfiled measures a weft rung, fetching the agents' CPU
// profiles during the single-stream test when -ladder.profile is set.
func measureRungProfiled(b *testing.B, l *lab.Lab, base rungResult, client, server string, dst netip.Addr, latency bool, tag string) {
	var stop func()
	if *ladderProfile != "" {
		stop = startProfiles(b, l, tag)
	}
	measureRungRatioHook(b, base, client, server, dst, latency, stop, tag)
}

func measureRungRatio(b *testing.B, base rungResult, client, server string, dst netip.Addr, latency bool) rungResult {
	return measureRungRatioHook(b, base, client, server, dst, latency, nil, "")
}

func measureRungRatioHook(b *testing.B, base rungResult, client, server string, dst netip.Addr, latency bool, afterTCP1 func(), tag string) rungResult {
	r := measureRung(b, afterTCP1, client, server, dst, latency, tag)
	for k, v := range r {
		if bv := base[k]; bv > 0 && !strings.HasPrefix(k, "us-") && !strings.HasPrefix(k, "cores-") && !strings.HasPrefix(k, "bound-") {
			b.ReportMetric(v/bv, "x-b-"+k)
		}
	}
	if bound, bt := r["bound-tcp1"], base["tcp1"]; bound > 0 && bt > 0 {
		// How far this rung could go with nothing in user space but
		// the AEAD, against the bar of 1.8× b.
		b.ReportMetric(bound/bt, "x-b-tcp1-bound")
	}
	return r
}

// measureRung runs every test of a rung from namespace client to dst in
// namespace server and reports them; with latency also the UDP ping-pong
// and the TCP request/response tests (measureRR). afterTCP1, if set, runs
// after the single-stream test. With -ladder.perf and a tag, perf records
// the whole machine during the single stream (reportShares).
func measureRung(b *testing.B, afterTCP1 func(), client, server string, dst netip.Addr, latency bool, tag string) rungResult {
	r := rungResult{}
	var cores1, cores4 float64
	var rec func() (string, error)
	var observe func()
	if tag != "" && *ladderPerf != "" && *ladderPerfEvents == "" {
		// perf takes ~0.1 s to start sampling; it stops before the streams.
		observe = func() { rec = perfRecorder(b, *ladderPerf, tag, *ladderTCPTime-200*time.Millisecond) }
	}
	r["tcp1"], cores1 = tcpStreamsObserved(b, client, server, netip.AddrPortFrom(dst, tcpPort), 1, observe)
	if rec != nil {
		file, err := rec()
		var s machineShares
		if err == nil {
			s, err = perfShares(file)
		}
		if err != nil {
			b.Logf("-ladder.perf %s: %v", tag, err)
		} else {
			r["bound-tcp1"] = reportShares(b, s, r["tcp1"])
		}
	}
	if afterTCP1 != nil {
		afterTCP1()
	}
	markMem("tcp1")
	r["tcp4"], cores4 = tcpStreams(b, client, server, netip.AddrPortFrom(dst, tcpPort+1), 4)
	markMem("tcp4")
	var coresU64, coresU1400 float64
	r["udp64"], coresU64 = udpRate(b, client, server, netip.AddrPortFrom(dst, udpPort), 64, tag)
	markMem("udp64")
	r["udp1400"], coresU1400 = udpRate(b, client, server, netip.AddrPortFrom(dst, udpPort+1), 1400, "")
	markMem("udp1400")
	b.ReportMetric(r["tcp1"], "Gbit/s-tcp1")
	b.ReportMetric(r["tcp4"], "Gbit/s-tcp4")
	// The whole machine's busy cores while the TCP streams ran: at all of
	// them, a rung's throughput is its CPU cost per bit.
	b.ReportMetric(cores1, "cores-tcp1")
	b.ReportMetric(cores4, "cores-tcp4")
	r["cores-tcp1"], r["cores-tcp4"] = cores1, cores4
	b.ReportMetric(r["udp64"]/1e3, "kpps-udp64")
	b.ReportMetric(r["udp1400"]/1e3, "kpps-udp1400")
	// The busy cores per unit of work: unlike the busy cores themselves
	// (2.0 whenever a rung is CPU-bound here), comparable between rungs
	// and across machines of other core counts.
	reportCostPerRate(b, cores1, r["tcp1"], "cores-per-Gbps-tcp1")
	reportCostPerRate(b, cores4, r["tcp4"], "cores-per-Gbps-tcp4")
	reportCostPerRate(b, coresU64, r["udp64"]/1e6, "cores-per-Mpps-udp64")
	reportCostPerRate(b, coresU1400, r["udp1400"]/1e6, "cores-per-Mpps-udp1400")
	if latency {
		p50, p99 := pingPong(b, client, server, netip.AddrPortFrom(dst, udpPort+2))
		b.ReportMetric(p50, "us-rtt-p50")
		b.ReportMetric(p99, "us-rtt-p99")
		r["us-rtt-p50"], r["us-rtt-p99"] = p50, p99
		markMem("pingpong")
		measureRR(b, r, client, server, dst, tag)
	}
	return r
}

// tcpStreams runs n TCP streams from client to a sink at dst for warm-up +
// measuring time and returns the Gbit/s the sink received while measuring
// and the machine's busy cores meanwhile (machineBusy).
func tcpStreams(b *testing.B, client, server string, dst netip.AddrPort, n int) (gbps, cores float64) {
	return tcpStreamsObserved(b, client, server, dst, n, nil)
}

// tcpStreamsObserved is tcpStreams calling observe, if set, as the
// measuring time starts.
func tcpStreamsObserved(b *testing.B, client, server string, dst netip.AddrPort, n int, observe func()) (gbps, cores float64) {
	var got int64
	tcpStreamsWith(b, client, server, dst, n, func(received func() int64) {
		if observe != nil {
			observe()
		}
		start, t0, cpu0 := received(), time.Now(), machineBusy(b)
		time.Sleep(*ladderTCPTime)
		got = received() - start
		gbps, cores = float64(got)*8/time.Since(t0).Seconds()/1e9, machineBusy(b).cores(cpu0)
	})
	if got == 0 {
		b.Fatalf("tcp %d streams to %v: nothing received", n, dst)
	}
	return gbps, cores
}

// tcpStreamsWith runs n TCP streams from client to dst (a sink in server)
// and, after the warm-up, calls measure with received, which returns the
// bytes the sink has received so far; the streams stop when measure
// returns.
func tcpStreamsWith(b *testing.B, client, server string, dst netip.AddrPort, n int, measure func(received func() int64)) {
	ln, err := lab.ListenIn(server, "tcp", ":"+strconv.Itoa(int(dst.Port())))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var received atomic.Int64
	var wg sync.WaitGroup
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				buf := make([]byte, 256<<10)
				for {
					k, err := c.Read(buf)
					received.Add(int64(k))
					if err != nil {
						return
					}
				}
			})
		}
	}()
	stop := make(chan struct{})
	var swg sync.WaitGroup
	// Stop everything also when measure (or a dial) fails the benchmark.
	defer func() {
		close(stop)
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		ln.Close()
		swg.Wait()
		wg.Wait()
	}()
	for range n {
		c := dialRetry(b, client, dst.String())
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		swg.Go(func() {
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
		})
	}
	time.Sleep(warmup) // warm-up period, not synchronisation
	measure(received.Load)
}

// cpuTimes is the machine's CPU time so far, from /proc/stat, in ticks.
type cpuTimes struct {
	busy, total uint64
	ncpu        int
}

// machineBusy reads the aggregate cpu line of /proc/stat: busy is every
// field but idle and iowait (user, nice, system, irq, softirq, steal).
func machineBusy(b *testing.B) cpuTimes {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, rest, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		b.Fatalf("/proc/stat: unexpected first line %q", line)
	}
	var t cpuTimes
	for i, s := range f[1:9] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat: field %d of %q: %v", i+1, line, err)
		}
		t.total += v
		if i != 3 && i != 4 { // idle, iowait
			t.busy += v
		}
	}
	for l := range strings.Lines(rest) {
		if len(l) > 3 && l[:3] == "cpu" && l[3] >= '0' && l[3] <= '9' {
			t.ncpu++
		}
	}
	return t
}

// cores returns the cores busy on average between since and t.
func (t cpuTimes) cores(since cpuTimes) float64 {
	if t.total <= since.total {
		return 0
	}
	return float64(t.busy-since.busy) / float64(t.total-since.total) * float64(t.ncpu)
}

// udpRate blasts size-byte IP packets (UDP payload size-28) from client to
// dst for the measuring time and returns the packets per second received
// and the machine's busy cores meanwhile.
func udpRate(b *testing.B, client, server string, dst netip.AddrPort, size int, tag string) (pps, cores float64) {
	pc, err := lab.ListenPacketIn(server, "udp4", ":"+strconv.Itoa(int(dst.Port())))
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	pc.(*net.UDPConn).SetReadBuffer(4 << 20)
	var received atomic.Int64
	rdone := make(chan struct{})
	go func() {
		defer close(rdone)
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			received.Add(1)
		}
	}()
	c, err := lab.DialIn(client, "udp4", dst.String(), 2*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	stop := make(chan struct{})
	sdone := make(chan struct{})
	go func() {
		defer close(sdone)
		payload := make([]byte, size-28)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for range 64 {
				c.Write(payload) // ENOBUFS / ECONNREFUSED under overload: keep going
			}
		}
	}()
	time.Sleep(warmup / 2)
	start, t0, cpu0 := received.Load(), time.Now(), machineBusy(b)
	var rec func() (string, error)
	if tag != "" && *ladderPerf != "" {
		rec = perfRecorder(b, *ladderPerf, fmt.Sprintf("%s-udp%d", tag, size), *ladderUDPTime-200*time.Millisecond)
	}
	var snap0 map[string]nsCounters
	prefix, _, _ := strings.Cut(server, "-")
	if *ladderDrops {
		snap0 = snapshotCounters(b, prefix+"-")
	}
	time.Sleep(*ladderUDPTime)
	got, el, cores := received.Load()-start, time.Since(t0), machineBusy(b).cores(cpu0)
	if *ladderDrops {
		logCounterRates(b, fmt.Sprintf("%s udp%d (%.1fk/s received)", tag, size, float64(got)/el.Seconds()/1e3), snap0, snapshotCounters(b, prefix+"-"), el)
	}
	if rec != nil {
		if file, err := rec(); err != nil {
			b.Logf("-ladder.perf %s: %v", tag, err)
		} else {
			b.Logf("-ladder.perf: UDP %d B recorded in %s", size, file)
		}
	}
	close(stop)
	<-sdone
	pc.Close()
	<-rdone
	if got == 0 {
		b.Fatalf("udp %d bytes to %v: nothing received", size, dst)
	}
	return float64(got) / el.Seconds(), cores
}

// pingPong sends one 64-byte UDP request at a time to an echo server and
// returns the round-trip p50 and p99 in microseconds.
func pingPong(b *testing.B, client, server string, dst netip.AddrPort) (p50, p99 float64) {
	pc, err := lab.ListenPacketIn(server, "udp4", ":"+strconv.Itoa(int(dst.Port())))
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	c, err := lab.DialIn(client, "udp4", dst.String(), 2*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req, resp := make([]byte, 64-28), make([]byte, 2048)
	var rtts []time.Duration
	deadline := time.Now().Add(*ladderUDPTime + warmup/2)
	warmEnd := time.Now().Add(warmup / 2)
	lost := 0
	for time.Now().Before(deadline) {
		t0 := time.Now()
		c.SetDeadline(t0.Add(200 * time.Millisecond))
		if _, err := c.Write(req); err != nil {
			lost++
			continue
		}
		if _, err := c.Read(resp); err != nil {
			lost++
			continue
		}
		if t0.After(warmEnd) {
			rtts = append(rtts, time.Since(t0))
		}
	}
	if len(rtts) < 100 {
		b.Fatalf("ping-pong to %v: %d answers, %d lost", dst, len(rtts), lost)
	}
	slices.Sort(rtts)
	q := func(p float64) float64 { return float64(rtts[int(p*float64(len(rtts)-1))]) / 1e3 }
	return q(0.50), q(0.99)
}

// vethPair makes the veth pair of rung a between two namespaces of this
// run, 198.18.0.201 and .202, removed when b ends.
func vethPair(b *testing.B) (nsA, nsB string) {
	run := lab.RunPrefix()
	nsA, nsB = run+"-va", run+"-vb"
	cleanup, err := lab.NewVethPair(nsA, nsB,
		netip.MustParsePrefix("198.18.0.201/24"), netip.MustParsePrefix("198.18.0.202/24"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cleanup)
	return nsA, nsB
}

// twoContainers creates a container of app appA on cell 1 and one of appB
// on cell 2, allows appA to reach appB on TCP ports, and returns the
// containers' namespaces and appB's overlay IP.
func twoContainers(b *testing.B, l *lab.Lab, appA, appB, ports string) (ctA, ctB string, ipB netip.Addr) {
	ctA, ctB = l.Name(appA), l.Name(appB)
	if _, err := l.CreateContainer(1, appA, ctA); err != nil {
		b.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, appB, ctB)
	if err != nil {
		b.Fatal(err)
	}
	if out, err := l.Weft(1, "add-network-policy", appA, appB, "--protocol", "tcp", "--port", ports); err != nil {
		b.Fatalf("add-network-policy %s %s: %v %s", appA, appB, err, out)
	}
	return ctA, ctB, ipB
}

// startPlainWG starts two plainwg processes, one in each namespace, peered
// over the veth pair's addresses, with TUN addresses 10.255.250.1/.2.
func startPlainWG(b *testing.B, nsA, nsB string) error {
	bin := filepath.Join(b.TempDir(), "plainwg")
	// plainwg is a module of its own (upstream wireguard-go, not weft's
	// patched copy): build it in its directory.
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = "internal/plainwg"
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build plainwg: %v: %s", err, out)
	}
	kA, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	kB, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	run := lab.RunPrefix()
	type side struct {
		ns, iface, addr, peerUnderlay, peerTUN string
		key, peer                              wgtypes.Key
	}
	sides := []side{
		{nsA, run + "pw1", "10.255.250.1/24", "198.18.0.202", "10.255.250.2/32", kA, kB.PublicKey()},
		{nsB, run + "pw2", "10.255.250.2/24", "198.18.0.201", "10.255.250.1/32", kB, kA.PublicKey()},
	}
	for _, s := range sides {
		cmd := lab.ExecIn(s.ns, bin, "-iface", s.iface, "-addr", s.addr, "-mtu", "1420")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stdin = strings.NewReader(fmt.Sprintf(
			"private_key=%s\nlisten_port=51820\npublic_key=%s\nendpoint=%s:51820\nallowed_ip=%s\n",
			hex.EncodeToString(s.key[:]), hex.EncodeToString(s.peer[:]), s.peerUnderlay, s.peerTUN))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		b.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		})
		line := make([]byte, 64)
		n, err := stdout.Read(line)
		if err != nil || !strings.HasPrefix(string(line[:n]), "ready") {
			return fmt.Errorf("plainwg in %s did not start: %q %v", s.ns, line[:n], err)
		}
		b.Logf("plainwg %s: %s", s.ns, strings.TrimSpace(string(line[:n])))
		go io.Copy(io.Discard, stdout)
	}
	return nil
}

// loadRules adds the rules the weft rungs need plus filler rules up to n
// through the agent API (replicated to both cells, persisted, so they
// survive restarts). It returns the number of rules cell 1 reports.
func loadRules(l *lab.Lab, n int) (int, error) {
	c := cellapi.NewClient(l.Cells[0].Socket)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rule := func(src, dst, proto string, lo, hi int) cellapi.PolicyRule {
		return cellapi.PolicyRule{Source: src, Destination: dst, Protocol: proto,
			Ports: cellapi.PortRange{Start: uint16(lo), End: uint16(hi)}}
	}
	want := []cellapi.PolicyRule{
		rule("ladA", "ladB", "tcp", tcpPort, rrPort+2),
		rule("ladA", "ladB", "udp", udpPort, udpPort+2),
		rule("ladA", "ladB", "udp", flowBase, flowBase+9999),
		rule("ladA", "ladC", "tcp", tcpPort, tcpPort+1),
		rule("ladA", "ladC", "udp", udpPort, udpPort+2),
	}
	// Filler: ladA to 100 other apps on 100 single ports each (more rules
	// for the apps of the measured flow), and rules between other apps.
	for i := 0; len(want) < n; i++ {
		if i < n/2 {
			want = append(want, rule("ladA", fmt.Sprintf("app%03d", i%100), "tcp", 30000+i/100, 30000+i/100))
		} else {
			want = append(want, rule(fmt.Sprintf("app%04d", i%1000), fmt.Sprintf("app%04d", i/1000), "udp", 40000+i%1000, 40000+i%1000))
		}
	}
	// In batches, as `weft policy push` sends a file: one request, one
	// persist and one gossip message per batch (10k single adds persisted
	// state.json 10k times and took minutes on a busy machine).
	const batch = 2000
	for lo := 0; lo < len(want); lo += batch {
		var req cellapi.PolicyChangesRequest
		for _, r := range want[lo:min(lo+batch, len(want))] {
			req.Changes = append(req.Changes, cellapi.SignedPolicyChange{Rule: r, Present: true})
		}
		res, err := c.PolicyChanges(ctx, req)
		if err != nil {
			return 0, fmt.Errorf("add rules %d-%d: %w", lo, lo+len(req.Changes)-1, err)
		}
		for i, r := range res {
			if r.Code != http.StatusCreated && r.Code != http.StatusOK {
				return 0, fmt.Errorf("add rule %d (%v): %d %s", lo+i, want[lo+i], r.Code, r.Error)
			}
		}
	}
	// Wait for cell 2 to have them all (gossip).
	c2 := cellapi.NewClient(l.Cells[1].Socket)
	for {
		st1, err1 := c.Status(ctx)
		st2, err2 := c2.Status(ctx)
		if err1 == nil && err2 == nil && st1.Policies >= len(want) && st2.Policies == st1.Policies {
			return st1.Policies, nil
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("rules did not replicate: %v %v", err1, err2)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// loadFlows opens n UDP flows from container client to dst (10 source
// sockets times n/10 ports of the allowed range) until both agents track at
// least n flows, and returns the smaller count.
func loadFlows(b *testing.B, l *lab.Lab, client, server string, dst netip.Addr, n int) int {
	return sendFlows(b, l, client, server, dst, n, true)
}

// sendFlows sends loadFlows' packets. With tracked false (agents with
// --policy=off, which track nothing) it sends two rounds, as loadFlows
// usually takes, and returns 0: the same traffic after a restart as d's
// agents get.
func sendFlows(b *testing.B, l *lab.Lab, client, server string, dst netip.Addr, n int, tracked bool) int {
	const socks = 10
	// The destination has no socket on these ports: keep its kernel from
	// answering with port unreachables (the engine ends a flow on one).
	err := lab.InNetns(server, func() error {
		for _, k := range []string{"icmp_msgs_per_sec", "icmp_msgs_burst"} {
			if err := os.WriteFile("/proc/sys/net/ipv4/"+k, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	ports := (n + socks - 1) / socks
	if ports > 10000 {
		b.Fatalf("at most %d flows", socks*10000)
	}
	var conns []net.PacketConn
	for range socks {
		pc, err := lab.ListenPacketIn(client, "udp4", ":0")
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Close()
		conns = append(conns, pc)
	}
	t0 := time.Now()
	msg := []byte("flow")
	for round := 0; ; round++ {
		for p := range ports {
			for _, pc := range conns {
				pc.WriteTo(msg, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, uint16(flowBase+p))))
			}
			if p%10 == 9 {
				time.Sleep(2 * time.Millisecond) // pace (≤ 50k packets/s): do not overrun queues
			}
		}
		if !tracked {
			if round == 1 {
				return 0
			}
			continue
		}
		got := minFlows(b, l)
		b.Logf("flows after round %d: %d (%v)", round, got, time.Since(t0).Round(time.Millisecond))
		if got >= n {
			return got
		}
		if round == 7 {
			b.Fatalf("only %d of %d flows tracked", got, n)
		}
	}
}

// minFlows is the smaller flow count of the two agents (both track a flow:
// cell 1 on the way out, cell 2 on the way in).
func minFlows(b *testing.B, l *lab.Lab) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	least := -1
	for _, c := range l.Cells[:2] {
		st, err := cellapi.NewClient(c.Socket).Status(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if least < 0 || st.Flows < least {
			least = st.Flows
		}
	}
	return least
}

// waitPeers waits until both agents have a WireGuard handshake with each
// other, so that measurements do not include the first handshake.
func waitPeers(b *testing.B, l *lab.Lab) {
	deadline := time.Now().Add(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	for {
		ok := true
		for _, c := range l.Cells[:2] {
			st, err := cellapi.NewClient(c.Socket).Status(ctx)
			if err != nil || len(st.Peers) != 1 {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("agents have no peers after 20 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// idleMem is agentMem of agents 3 s after they started (start), past
// their first memory tick (cmd/weft/memlimit.go, every second), and 10 s
// after (idle). At 3 s the agents are still exchanging their full state
// (the 10k rules) over the mesh: in a trace (-ladder.mem) the first agent
// held 20 MB of heap in use at 3 s and 37 MB of RSS, then trimmed to 15-20
// MB at 4.5 s; at rest, 10 s after start, both held 22-23 MB.
func idleMem(b *testing.B, l *lab.Lab) (start, idle mem) {
	time.Sleep(3 * time.Second)
	start = agentMem(l)
	logMem(b, l, strings.TrimPrefix(b.Name(), "BenchmarkLadder/")[:1]+"-start")
	if *ladderMem != "" {
		traceMem(b, l, "trace", 7*time.Second)
	} else {
		time.Sleep(7 * time.Second)
	}
	return start, agentMem(l)
}

// mem is an agent's resident memory in bytes.
type mem struct{ rss, hwm, anon, file int64 }

// agentMem is the larger VmRSS and VmHWM over the two agents.
func agentMem(l *lab.Lab) mem {
	var m mem
	for _, c := range l.Cells[:2] {
		pm := procMem(c.PID())
		m.rss = max(m.rss, pm.rss)
		m.hwm = max(m.hwm, pm.hwm)
	}
	return m
}

func procMem(pid int) mem {
	var m mem
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.rss = kb << 10
		case "VmHWM:":
			m.hwm = kb << 10
		case "RssAnon:":
			m.anon = kb << 10
		case "RssFile:":
			m.file = kb << 10
		}
	}
	return m
}

// startProfiles starts fetching a CPU profile from both agents (covering the
// single-stream test) and returns a function that waits for them and also
// saves the block, mutex and heap profiles.
func startProfiles(b *testing.B, l *lab.Lab, tag string) func() {
	if err := os.MkdirAll(*ladderProfile, 0o755); err != nil {
		b.Fatal(err)
	}
	secs := int((warmup + *ladderTCPTime).Seconds())
	var wg sync.WaitGroup
	fetch := func(c *lab.Cell, what, url string, timeout time.Duration) {
		code, body, err := lab.HTTPGetIn(c.Netns, url, timeout)
		if err != nil || code != 200 {
			b.Logf("profile %s of cell %d: %d %v", what, c.Index, code, err)
			return
		}
		path := filepath.Join(*ladderProfile, fmt.Sprintf("%s-cell%d.%s.pb.gz", tag, c.Index, what))
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			b.Log(err)
		}
	}
	for _, c := range l.Cells[:2] {
		wg.Go(func() {
			fetch(c, "cpu", fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pprofAt, secs), time.Duration(secs+10)*time.Second)
		})
	}
	return func() {
		wg.Wait()
		for _, c := range l.Cells[:2] {
			fetch(c, "block", "http://"+pprofAt+"/debug/pprof/block", 10*time.Second)
			fetch(c, "mutex", "http://"+pprofAt+"/debug/pprof/mutex", 10*time.Second)
			fetch(c, "heap", "http://"+pprofAt+"/debug/pprof/heap", 10*time.Second)
		}
	}
}

// meanOf is the mean of v.
func meanOf(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t / float64(len(v))
}

// stdErr is the standard error of the mean of v.
func stdErr(v []float64) float64 {
	if len(v) < 2 {
		return 0
	}
	m, ss := meanOf(v), 0.0
	for _, x := range v {
		ss += (x - m) * (x - m)
	}
	return math.Sqrt(ss / float64(len(v)-1) / float64(len(v)))
}

// medianOf returns the median of v (of an even count, the mean of the
// middle two).
func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}
