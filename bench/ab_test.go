package bench

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

var (
	abOld    = flag.String("ab.old", "", "BenchmarkAB: the weft binary measured as old")
	abNew    = flag.String("ab.new", "", "BenchmarkAB: the weft binary measured as new")
	abRounds = flag.Int("ab.rounds", 10, "BenchmarkAB: rounds of old and new in turn")
)

// BenchmarkAB compares two weft binaries on one lab: in each round both
// agents are restarted on the old binary and then the new one (the other
// order in odd rounds), and each weft TCP test (rung d's path, policy on,
// one rule) runs between two tests of plain wireguard-go (rung b), so that
// the machine's drift cancels in d/b. It reports the mean and median of
// new/old over the rounds' d/b, for one stream and four, and the median
// over rounds of new/old for UDP 64 B packets/s, TCP transactions/s on 1
// and 32 connections and the UDP ping-pong round trip (p50, p99).
//
//	go build -o /tmp/weft-old ./cmd/weft   # at the old commit
//	go build -o /tmp/weft-new ./cmd/weft
//	go test -run '^$' -bench '^BenchmarkAB$' -benchtime 1x -timeout 30m ./bench/ -args -ab.old /tmp/weft-old -ab.new /tmp/weft-new
func BenchmarkAB(b *testing.B) {
	if *abOld == "" || *abNew == "" {
		b.Skip("needs -ab.old and -ab.new (weft binaries)")
	}
	lab.RequireRoot(b)
	nsA, nsB := vethPair(b)
	wgB := netip.MustParseAddr("10.255.250.2")
	if err := startPlainWG(b, nsA, nsB); err != nil {
		b.Fatal(err)
	}
	// The lab runs whatever binary is at weftBin: install one or the
	// other there before each restart.
	install := func(src string) {
		data, err := os.ReadFile(src)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(weftBin+".next", data, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(weftBin+".next", weftBin); err != nil {
			b.Fatal(err)
		}
	}
	install(*abOld)
	l := lab.Setup(b, lab.Config{Cells: 2, WeftBin: weftBin})
	ctA, ctB, ipB := twoContainers(b, l, "aba", "abb", "5201-5202")
	for _, p := range [][2]string{{"udp", fmt.Sprintf("%d-%d", udpPort, udpPort+2)}, {"tcp", fmt.Sprintf("%d-%d", rrPort, rrPort+1)}} {
		if out, err := l.Weft(1, "add-network-policy", "aba", "abb", "--protocol", p[0], "--port", p[1]); err != nil {
			b.Fatalf("add-network-policy %s: %v %s", p[0], err, out)
		}
	}
	rrBin := buildTool(b, "./internal/tcprr")
	// d/b and d's Gbit/s of each round, by binary and stream count; UDP
	// 64 B packets/s delivered and the machine's cores per Mpps.
	ratio := map[string]*[2][]float64{"old": {}, "new": {}}
	gbps := map[string]*[2][]float64{"old": {}, "new": {}}
	udp := map[string]*[2][]float64{"old": {}, "new": {}}
	// Request/response: transactions/s on 1 and 32 connections, and the
	// UDP ping-pong round trip p50 and p99 (µs).
	rr := map[string]*[4][]float64{"old": {}, "new": {}}
	for r := range *abRounds {
		order := []string{"old", "new"}
		if r%2 == 1 {
			order = []string{"new", "old"}
		}
		for _, v := range order {
			install(map[string]string{"old": *abOld, "new": *abNew}[v])
			for i := 1; i <= 2; i++ {
				if err := l.StartCellWith(i, nil); err != nil {
					b.Fatal(err)
				}
			}
			waitPeers(b, l)
			time.Sleep(3 * time.Second)                                  // both cells' features announced and learned
			tcpStreams(b, ctA, ctB, netip.AddrPortFrom(ipB, tcpPort), 1) // warm-up
			for i, n := range []int{1, 4} {
				port := tcpPort + uint16(i)
				b1, _ := tcpStreams(b, nsA, nsB, netip.AddrPortFrom(wgB, port), n)
				d, _ := tcpStreams(b, ctA, ctB, netip.AddrPortFrom(ipB, port), n)
				b2, _ := tcpStreams(b, nsA, nsB, netip.AddrPortFrom(wgB, port), n)
				gbps[v][i] = append(gbps[v][i], d)
				x := 2 * d / (b1 + b2)
				ratio[v][i] = append(ratio[v][i], x)
			}
			pps, cores := udpRate(b, ctA, ctB, netip.AddrPortFrom(ipB, udpPort), 64, "")
			udp[v][0] = append(udp[v][0], pps)
			udp[v][1] = append(udp[v][1], cores/(pps/1e6))
			for k, conns := range []int{1, rrConns} {
				res := tcpRR(b, rrBin, ctA, ctB, netip.AddrPortFrom(ipB, rrPort+uint16(k)), conns, false, "")
				rr[v][k] = append(rr[v][k], res.tps)
			}
			p50, p99 := pingPong(b, ctA, ctB, netip.AddrPortFrom(ipB, udpPort+2))
			rr[v][2] = append(rr[v][2], p50)
			rr[v][3] = append(rr[v][3], p99)
		}
	}
	// UDP against the same round's other binary: the machine's drift
	// between rounds cancels.
	var qu, qc []float64
	for r := range udp["new"][0] {
		qu = append(qu, udp["new"][0][r]/udp["old"][0][r])
		qc = append(qc, udp["new"][1][r]/udp["old"][1][r])
	}
	b.Logf("udp64: kpps old %.1f, new %.1f; new/old %.3f; cores per Mpps old %.1f, new %.1f",
		medianOf(udp["old"][0])/1e3, medianOf(udp["new"][0])/1e3, qu, medianOf(udp["old"][1]), medianOf(udp["new"][1]))
	for k, name := range []string{"rr1", "rr32", "rtt-p50", "rtt-p99"} {
		var q []float64
		for r := range rr["new"][k] {
			q = append(q, rr["new"][k][r]/rr["old"][k][r])
		}
		b.Logf("%s: old %.0f, new %.0f (medians); new/old by round %.3f", name, medianOf(rr["old"][k]), medianOf(rr["new"][k]), q)
		b.ReportMetric(medianOf(q), "x-new-old-"+name+"-median")
		b.ReportMetric(medianOf(rr["old"][k]), name+"-old")
		b.ReportMetric(medianOf(rr["new"][k]), name+"-new")
	}
	b.ReportMetric(medianOf(qu), "x-new-old-udp64-median")
	b.ReportMetric(medianOf(qc), "x-new-old-cores-per-Mpps-udp64-median")
	for i, n := range []int{1, 4} {
		var q []float64
		for r := range ratio["new"][i] {
			q = append(q, ratio["new"][i][r]/ratio["old"][i][r])
		}
		// The lab's log lines come first and go test cuts a benchmark's
		// log short: one line per stream count.
		b.Logf("tcp%d: d/b old %.3f; new %.3f; new/old %.3f; d Gbit/s old %.2f, new %.2f", n,
			ratio["old"][i], ratio["new"][i], q, gbps["old"][i], gbps["new"][i])
		b.ReportMetric(meanOf(q), fmt.Sprintf("x-new-old-tcp%d-mean", n))
		b.ReportMetric(stdErr(q), fmt.Sprintf("x-new-old-tcp%d-stderr", n))
		b.ReportMetric(medianOf(q), fmt.Sprintf("x-new-old-tcp%d-median", n))
		b.ReportMetric(medianOf(ratio["old"][i]), fmt.Sprintf("x-b-tcp%d-old", n))
		b.ReportMetric(medianOf(ratio["new"][i]), fmt.Sprintf("x-b-tcp%d-new", n))
	}
}
