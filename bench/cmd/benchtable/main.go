// Command benchtable turns `go test -bench Ladder` output (stdin) into the
// ladder table (Markdown) on stdout. Input lines are echoed to stderr, so
// the run's progress stays visible in a pipe. With -count N, each cell of
// the table is the median of the N runs.
//
//	go test -run '^$' -bench Ladder -benchtime 1x ./bench/ | go run ./bench/cmd/benchtable
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// column is one column of the table: the metric units it shows.
type column struct {
	head  string
	unit  string // metric unit
	ratio string // unit of the ratio metric shown next to it, or ""
	prec  int
}

// table is one Markdown table: a row for each rung with a value in one
// of its columns.
type table struct {
	title   string // line above the table, or ""
	columns []column
}

var tables = []table{
	{"", []column{
		{"TCP 1 stream Gbit/s", "Gbit/s-tcp1", "x-b-tcp1", 2},
		{"TCP 4 streams Gbit/s", "Gbit/s-tcp4", "x-b-tcp4", 2},
		{"cores busy, TCP 1 stream", "cores-tcp1", "", 2},
		{"cores busy, TCP 4 streams", "cores-tcp4", "", 2},
		{"UDP 64 B kpps", "kpps-udp64", "x-b-udp64", 0},
		{"UDP 1400 B kpps", "kpps-udp1400", "x-b-udp1400", 0},
		{"RTT p50 µs", "us-rtt-p50", "", 0},
		{"RTT p99 µs", "us-rtt-p99", "", 0},
		{"RSS idle MB", "MB-rss-idle", "", 0},
		{"RSS 100k flows MB", "MB-rss-flows", "", 0},
		{"RSS peak MB", "MB-rss-peak", "", 0},
	}},
	{"Cores busy per unit of work (the whole machine's, over the rate):", []column{
		{"per Gbit/s, TCP 1 stream", "cores-per-Gbps-tcp1", "", 3},
		{"per Gbit/s, TCP 4 streams", "cores-per-Gbps-tcp4", "", 3},
		{"per Mpps, UDP 64 B", "cores-per-Mpps-udp64", "", 1},
		{"per Mpps, UDP 1400 B", "cores-per-Mpps-udp1400", "", 1},
		{"per M transactions, TCP RR 1 conn", "cores-per-Mtrans-rr1", "", 0},
		{"per M transactions, TCP RR 32 conns", "cores-per-Mtrans-rr32", "", 0},
		{"per M new connections", "cores-per-Mtrans-crr", "", 0},
	}},
	{"TCP request/response (1-byte request and answer):", []column{
		{"1 connection, transactions/s", "trans/s-rr1", "x-b-rr1", 0},
		{"32 connections, transactions/s", "trans/s-rr32", "x-b-rr32", 0},
		{"new connections/s (32 at once)", "conn/s-crr", "x-b-crr", 0},
	}},
}

func main() {
	echo := flag.Bool("echo", true, "echo the input to stderr")
	flag.Parse()
	var in io.Reader = os.Stdin
	if *echo {
		in = io.TeeReader(os.Stdin, os.Stderr)
	}
	rows, order, err := parse(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if len(order) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no Ladder benchmark lines in the input")
		os.Exit(1)
	}
	fmt.Print(format(rows, order))
}

// parse collects metric values per sub-benchmark name (several with -count).
func parse(r io.Reader) (map[string]map[string][]float64, []string, error) {
	rows := map[string]map[string][]float64{}
	var order []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkLadder/") {
			continue
		}
		name := strings.TrimPrefix(f[0], "BenchmarkLadder/")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i] // GOMAXPROCS suffix
			}
		}
		if rows[name] == nil {
			rows[name] = map[string][]float64{}
			order = append(order, name)
		}
		// f[1] is the iteration count; then value unit pairs.
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			rows[name][f[i+1]] = append(rows[name][f[i+1]], v)
		}
	}
	slices.Sort(order) // rungs are named a-..g-, n-
	return rows, order, sc.Err()
}

func median(v []float64) (float64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2], true
}

func format(rows map[string]map[string][]float64, order []string) string {
	var sb strings.Builder
	for i, t := range tables {
		tb := formatTable(rows, order, t.columns)
		if tb == "" {
			continue
		}
		if i > 0 {
			sb.WriteString("\n")
		}
		if t.title != "" {
			sb.WriteString(t.title + "\n\n")
		}
		sb.WriteString(tb)
	}
	// The targets of issue 5, when the rungs are there.
	get := func(row, unit string) (float64, bool) {
		for _, n := range order {
			if strings.HasPrefix(n, row) {
				return median(rows[n][unit])
			}
		}
		return 0, false
	}
	for _, unit := range []string{"Gbit/s-tcp1", "Gbit/s-tcp4"} {
		c, okc := get("c-", unit)
		d, okd := get("d-", unit)
		bb, okb := get("b-", unit)
		if okc && okd && okb && c > 0 && bb > 0 {
			fmt.Fprintf(&sb, "\n%s: d/c = %.2f (target ≥ 0.97), d/b = %.2f (floor 1.0, bar 1.8)", unit, d/c, d/bb)
		}
	}
	for _, n := range []string{"1", "4"} {
		r, okr := get("d2-", "x-b-tcp"+n+"-paired")
		bb, _ := get("d2-", "Gbit/s-b-tcp"+n+"-paired")
		d, _ := get("d2-", "Gbit/s-d-tcp"+n+"-paired")
		if !okr {
			continue
		}
		fmt.Fprintf(&sb, "\nGbit/s-tcp%s, rungs in turn (medians): b %.2f, d %.2f, d/b = %.2f", n, bb, d, r)
		if rc, ok := get("d2-", "x-c-tcp"+n+"-paired"); ok {
			c, _ := get("d2-", "Gbit/s-c-tcp"+n+"-paired")
			fmt.Fprintf(&sb, "; c %.2f, d/c = %.2f", c, rc)
		}
	}
	for _, n := range []string{"1", "4"} {
		r, okr := get("d3-", "x-c-tcp"+n+"-toggled")
		c, _ := get("d3-", "Gbit/s-c-tcp"+n+"-toggled")
		d, _ := get("d3-", "Gbit/s-d-tcp"+n+"-toggled")
		se, _ := get("d3-", "x-c-tcp"+n+"-toggled-stderr")
		if okr {
			fmt.Fprintf(&sb, "\nGbit/s-tcp%s, policy off and on in turn under one test (means): c %.2f, d %.2f, d/c = %.2f ± %.3f (target ≥ 0.97)", n, c, d, r, se)
		}
	}
	if g, ok := get("g-", "Gbit/s-ceiling"); ok {
		x, _ := get("g-", "x-b-ceiling")
		hp, _ := get("g-", "cores-per-Gbps-hairpin")
		cr, _ := get("g-", "cores-per-Gbps-crypto")
		udp, _ := get("g-", "cores-per-Gbps-udp")
		fmt.Fprintf(&sb, "\nceiling of any WireGuard data path here (g): %.2f Gbit/s = %.2f× b tcp1 (bar 1.8); cores per Gbit/s: hair-pin %.3f, crypto %.3f, UDP %.3f", g, x, hp, cr, udp)
	}
	// -ladder.perf: where the whole machine's time went during tcp1.
	for _, r := range []string{"b-", "c-", "d-"} {
		aead, ok := get(r, "pct-aead-tcp1")
		if !ok {
			continue
		}
		kern, _ := get(r, "pct-kernel-tcp1")
		user, _ := get(r, "pct-user-tcp1")
		idle, _ := get(r, "pct-idle-tcp1")
		bound, _ := get(r, "Gbit/s-tcp1-bound")
		fmt.Fprintf(&sb, "\nwhole machine during %stcp1 (perf): AEAD %.1f%%, kernel %.1f%%, other user space %.1f%%, idle %.1f%%; AEAD and kernel alone: %.2f Gbit/s",
			r, aead, kern, user, idle, bound)
		if x, ok := get(r, "x-b-tcp1-bound"); ok {
			fmt.Fprintf(&sb, " = %.2f× b (bar 1.8)", x)
		} else if bt, ok := get("b-", "Gbit/s-tcp1"); ok && r == "b-" && bt > 0 {
			fmt.Fprintf(&sb, " = %.2f× b", bound/bt)
		}
	}
	sb.WriteString("\n")
	return sb.String()
}

// formatTable is the table of columns, a row for each rung with a value
// in one of them; "" if there is none.
func formatTable(rows map[string]map[string][]float64, order []string, columns []column) string {
	var sb strings.Builder
	sb.WriteString("| rung |")
	for _, c := range columns {
		sb.WriteString(" " + c.head + " |")
	}
	sb.WriteString("\n|---|")
	for range columns {
		sb.WriteString("---:|")
	}
	sb.WriteString("\n")
	n := 0
	for _, name := range order {
		if !slices.ContainsFunc(columns, func(c column) bool { return len(rows[name][c.unit]) > 0 }) {
			continue // d2-paired-b-c-d, d3-toggled-c-d, g-ceiling: lines below the tables
		}
		n++
		sb.WriteString("| " + name + " |")
		for _, c := range columns {
			v, ok := median(rows[name][c.unit])
			if !ok {
				sb.WriteString(" – |")
				continue
			}
			cell := strconv.FormatFloat(v, 'f', c.prec, 64)
			if r, ok := median(rows[name][c.ratio]); ok && c.ratio != "" {
				cell += fmt.Sprintf(" (%.2f×)", r)
			}
			sb.WriteString(" " + cell + " |")
		}
		sb.WriteString("\n")
	}
	if n == 0 {
		return ""
	}
	return sb.String()
}
