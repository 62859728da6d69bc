// Command benchtable turns `go test -bench Ladder` output into the ladder
// table (Markdown) on stdout, and keeps runs as data.
//
// From stdin (input lines are echoed to stderr, so that the run's progress
// stays visible in a pipe); -save DIR also writes the run as a result file
// (bench/internal/result: commit, date, machine, command and every
// benchmark line's metrics) into DIR, as `make bench` does:
//
//	go test -run '^$' -bench Ladder -benchtime 1x ./bench/ | go run ./bench/cmd/benchtable
//
// From a result file (or a file of saved go test output):
//
//	go run ./bench/cmd/benchtable -in bench/results/2026-12-05T091203Z_f899e1d.json
//
// Two runs side by side, every benchmark's every metric with the ratio
// new/old (-match keeps the rows whose "name unit" matches a regexp):
//
//	go run ./bench/cmd/benchtable -compare OLD NEW
//
// With -count N, each cell is the median of the N runs.
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/bench/internal/result"
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
	echo := flag.Bool("echo", true, "echo stdin to stderr")
	in := flag.String("in", "", "read this result file (JSON, or saved go test output) instead of stdin")
	save := flag.String("save", "", "write the run read from stdin as a result file into this directory")
	command := flag.String("cmd", "", "with -save: the command that produced the input, recorded in the file")
	commit := flag.String("commit", "", "with -save: the commit recorded (default: git describe --always --dirty)")
	compare := flag.Bool("compare", false, "compare two result files: benchtable -compare OLD NEW")
	match := flag.String("match", "", `with -compare: only rows whose "name unit" matches this regexp`)
	flag.Parse()
	o := options{echo: *echo, in: *in, save: *save, command: *command, commit: *commit, compare: *compare, match: *match, args: flag.Args()}
	if err := run(o, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

// options are the command's flags and arguments.
type options struct {
	echo                      bool
	in, save, command, commit string
	compare                   bool
	match                     string
	args                      []string
}

func run(o options, stdin io.Reader, stdout, stderr io.Writer) error {
	if o.compare {
		if len(o.args) != 2 {
			return fmt.Errorf("-compare needs two result files, OLD and NEW; got %d arguments", len(o.args))
		}
		var re *regexp.Regexp
		if o.match != "" {
			var err error
			if re, err = regexp.Compile(o.match); err != nil {
				return fmt.Errorf("-match: %w", err)
			}
		}
		old, err := result.Load(o.args[0])
		if err != nil {
			return err
		}
		cur, err := result.Load(o.args[1])
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, compareRuns(old, cur, re))
		return nil
	}
	if len(o.args) > 0 {
		return fmt.Errorf("unexpected arguments %q (a file to read goes after -in)", o.args)
	}
	var res *result.Result
	var perr error // a garbled line: reported, the rest still saved and shown
	if o.in != "" {
		if res, perr = result.Load(o.in); res == nil {
			return perr
		}
	} else {
		// The machine as the run starts, before the benchmarks load it.
		start, machine := time.Now().UTC(), result.ReadMachine()
		r := stdin
		if o.echo {
			r = io.TeeReader(stdin, stderr)
		}
		if res, perr = result.Parse(r); res == nil {
			return perr
		}
		res.Date, res.Machine, res.Command = start, machine, o.command
		if res.Commit = o.commit; o.commit == "" {
			res.Commit = result.Commit(".")
		}
		if o.save != "" && len(res.Benchmarks) > 0 {
			p, err := res.Save(o.save)
			if err != nil {
				return fmt.Errorf("-save: %w", err)
			}
			fmt.Fprintln(stderr, "benchtable: wrote", p)
		}
	}
	rows, order := ladderRows(res)
	if len(order) == 0 {
		return errors.Join(perr, errors.New("no Ladder benchmark lines in the input"))
	}
	if res.Commit != "" || !res.Date.IsZero() {
		fmt.Fprintf(stdout, "Run: %s.\n", describe(res))
		if res.Command != "" {
			fmt.Fprintf(stdout, "Command: %s\n", res.Command)
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprint(stdout, format(rows, order))
	return perr
}

// describe is the run in a few words: commit, date, machine, verdict,
// each if known.
func describe(r *result.Result) string {
	var p []string
	if r.Commit != "" {
		p = append(p, "commit "+r.Commit)
	}
	if !r.Date.IsZero() {
		p = append(p, r.Date.Format("2006-01-02 15:04 UTC"))
	}
	m := r.Machine
	if cpu := cmp.Or(m.CPU, r.Config["cpu"]); cpu != "" {
		p = append(p, cpu)
	}
	if m.Cores > 0 {
		p = append(p, fmt.Sprintf("%d cores", m.Cores), fmt.Sprintf("load %.2f at start", m.LoadAvg[0]))
	}
	if m.Kernel != "" {
		p = append(p, "kernel "+m.Kernel)
	}
	if r.Status != "" {
		p = append(p, "go test "+r.Status)
	}
	return strings.Join(p, ", ")
}

// parse collects metric values per Ladder rung (several with -count).
func parse(r io.Reader) (map[string]map[string][]float64, []string, error) {
	res, err := result.Parse(r)
	if res == nil {
		return nil, nil, err
	}
	rows, order := ladderRows(res)
	return rows, order, err
}

// ladderRows are the values of each unit per Ladder rung, the rungs in
// name order (a-..g-, n-).
func ladderRows(res *result.Result) (map[string]map[string][]float64, []string) {
	rows := map[string]map[string][]float64{}
	var order []string
	for _, b := range res.Benchmarks {
		name, ok := strings.CutPrefix(b.Name, "BenchmarkLadder/")
		if !ok {
			continue
		}
		if rows[name] == nil {
			rows[name] = map[string][]float64{}
			order = append(order, name)
		}
		for _, m := range b.Metrics {
			rows[name][m.Unit] = append(rows[name][m.Unit], m.Value)
		}
	}
	slices.Sort(order)
	return rows, order
}

// compareRuns is a Markdown table of every benchmark and unit of either
// run (old's order, then what only new has), the medians of each and
// new/old.
func compareRuns(old, cur *result.Result, match *regexp.Regexp) string {
	type key struct{ name, unit string }
	vals := [2]map[key][]float64{{}, {}}
	var keys []key
	for i, r := range []*result.Result{old, cur} {
		for _, b := range r.Benchmarks {
			name := strings.TrimPrefix(b.Name, "Benchmark")
			for _, m := range b.Metrics {
				k := key{name, m.Unit}
				if match != nil && !match.MatchString(k.name+" "+k.unit) {
					continue
				}
				if _, seen := vals[0][k]; !seen {
					if _, seen := vals[1][k]; !seen {
						keys = append(keys, k)
					}
				}
				vals[i][k] = append(vals[i][k], m.Value)
			}
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "old: %s\nnew: %s\n\n", describe(old), describe(cur))
	sb.WriteString("| benchmark | unit | old | new | new/old |\n|---|---|---:|---:|---:|\n")
	cell := func(v float64, ok bool) string {
		if !ok {
			return "–"
		}
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
	for _, k := range keys {
		o, oko := median(vals[0][k])
		n, okn := median(vals[1][k])
		ratio := "–"
		if oko && okn && o != 0 {
			ratio = fmt.Sprintf("%.3f", n/o)
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s |\n", k.name, k.unit, cell(o, oko), cell(n, okn), ratio)
	}
	return sb.String()
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
