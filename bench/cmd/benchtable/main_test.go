package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/bench/internal/result"
)

// A rung's request/response and cost metrics land in their own tables,
// with the ratio to b next to the rate; rungs without them have no row
// there.
func TestFormatTables(t *testing.T) {
	in := `BenchmarkLadder/b-wireguard-go-2  1  5 ns/op  3.00 Gbit/s-tcp1  2.00 cores-tcp1  0.667 cores-per-Gbps-tcp1  10000 trans/s-rr1  200 cores-per-Mtrans-rr1  4000 conn/s-crr
BenchmarkLadder/a-veth-2  1  5 ns/op  30.0 Gbit/s-tcp1  10.0 x-b-tcp1
BenchmarkLadder/n-nebula-2  1  5 ns/op  1.50 Gbit/s-tcp1  0.50 x-b-tcp1  1.333 cores-per-Gbps-tcp1  45.5 cores-per-Mpps-udp64  5000 trans/s-rr1  0.50 x-b-rr1  2500 conn/s-crr  0.625 x-b-crr
`
	rows, order, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	out := format(rows, order)
	for _, want := range []string{
		"| n-nebula | 1.50 (0.50×) |",
		"| b-wireguard-go | 0.667 | – | – | – | 200 | – | – |",
		"| n-nebula | 1.333 | – | 45.5 | – | – | – | – |",
		"| b-wireguard-go | 10000 | – | 4000 |",
		"| n-nebula | 5000 (0.50×) | – | 2500 (0.62×) |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	// a-veth has no request/response or cost metrics: one row only.
	if n := strings.Count(out, "| a-veth |"); n != 1 {
		t.Errorf("a-veth in %d tables, want 1:\n%s", n, out)
	}
}

const (
	ladderRun = "../../internal/result/testdata/ladder-b-n-d-e.txt"  // a real run: b, n, d, e, PASS
	failedRun = "../../internal/result/testdata/ladder-b-n-fail.txt" // a real run: b, n, then FAIL
)

// A run read from stdin with -save lands in a result file named by date
// and commit; -in renders that file to the same table as stdin did, with
// the commit and command above it.
func TestSaveThenRender(t *testing.T) {
	raw, err := os.ReadFile(ladderRun)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var out1, errOut bytes.Buffer
	o := options{echo: true, save: dir, commit: "f899e1d-dirty", command: "go test -bench Ladder ./bench/"}
	if err := run(o, bytes.NewReader(raw), &out1, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(errOut.String(), string(raw)) {
		t.Error("stdin not echoed to stderr")
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*_f899e1d-dirty.json"))
	if len(files) != 1 {
		t.Fatalf("result files %q", files)
	}
	res, err := result.Load(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Benchmarks) != 4 || res.Status != "ok" || res.Machine.Cores < 1 || res.Date.IsZero() || res.Command != o.command {
		t.Errorf("saved %+v", res)
	}
	var out2 bytes.Buffer
	if err := run(options{in: files[0]}, nil, &out2, io.Discard); err != nil {
		t.Fatal(err)
	}
	if out1.String() != out2.String() {
		t.Errorf("stdin table\n%s\n-in table\n%s", out1.String(), out2.String())
	}
	for _, want := range []string{
		"Run: commit f899e1d-dirty, ",
		"Command: go test -bench Ladder ./bench/\n",
		"| d-weft-10k-rules-100k-flows | 1.21 (3.01×) | 1.39 (3.28×) | 2.00 | 2.00 | 17 (1.16×) | 17 (1.26×) | 352 | 714 | 60 | 61 | 86 |",
		"| n-nebula | 0.98 (2.44×) |",
		"| e-weft-hairpin | 4.93 (12.26×) |",
		"| b-wireguard-go | 3491 | 9763 | 1356 |",
	} {
		if !strings.Contains(out2.String(), want) {
			t.Errorf("missing %q in\n%s", want, out2.String())
		}
	}
}

// -compare puts two runs side by side: each metric of each benchmark,
// the ratio new/old, "–" where one run has no value; -match keeps some.
func TestCompare(t *testing.T) {
	var out bytes.Buffer
	if err := run(options{compare: true, args: []string{failedRun, ladderRun}}, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"old: Oxide Virtual Turin-like Processor, go test FAIL\n",
		"new: Oxide Virtual Turin-like Processor, go test ok\n",
		"| Ladder/b-wireguard-go | Gbit/s-tcp1 | 0.4151 | 0.4018 | 0.968 |",
		"| Ladder/n-nebula | Gbit/s-tcp1 | 1.255 | 0.98 | 0.781 |",
		"| Ladder/d-weft-10k-rules-100k-flows | rules | – | 5000 | – |",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %q in\n%s", want, s)
		}
	}
	// b's rows come first, in the order go test printed them.
	if i, j := strings.Index(s, "| Ladder/b-wireguard-go | ns/op |"), strings.Index(s, "| Ladder/n-nebula | ns/op |"); i < 0 || j < i {
		t.Errorf("row order in\n%s", s)
	}
	out.Reset()
	if err := run(options{compare: true, match: `tcp1$`, args: []string{failedRun, ladderRun}}, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if rows := strings.Count(out.String(), "\n| Ladder/"); rows != 15 { // Gbit/s, cores, cores-per-Gbps of b; and x-b of n, d, e
		t.Errorf("%d rows with -match tcp1$:\n%s", rows, out.String())
	}
	err := run(options{compare: true, args: []string{failedRun}}, nil, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "two result files") {
		t.Errorf("one file: %v", err)
	}
}

// Input without Ladder lines is an error that says so; a garbled line is
// named, and the rest of the run is still rendered.
func TestBadInput(t *testing.T) {
	err := run(options{}, strings.NewReader("goos: linux\nPASS\n"), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no Ladder benchmark lines") {
		t.Errorf("no lines: %v", err)
	}
	var out bytes.Buffer
	in := "BenchmarkLadder/a-veth-2 1 5 ns/op 30.0 Gbit/s-tcp1\nBenchmarkLadder/b-wireguard-go-2 1 5 ns/op x Gbit/s-tcp1\n"
	err = run(options{commit: "c"}, strings.NewReader(in), &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `line 2: BenchmarkLadder/b-wireguard-go-2: value "x"`) {
		t.Errorf("garbled: %v", err)
	}
	if !strings.Contains(out.String(), "| a-veth | 30.00 |") {
		t.Errorf("a-veth lost:\n%s", out.String())
	}
}
