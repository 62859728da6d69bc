package result

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func load(t *testing.T, name string) *Result {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A real ladder run (rungs b, n, d and e, with --- BENCH log blocks
// between the lines): every line with every metric in its printed order.
func TestParseLadder(t *testing.T) {
	r := load(t, "ladder-b-n-d-e.txt")
	var names []string
	for _, b := range r.Benchmarks {
		names = append(names, b.Name)
		if b.Procs != 2 || b.Iterations != 1 || b.Pkg != "github.com/weft-net/weft/bench" {
			t.Errorf("%s: procs %d iterations %d pkg %q", b.Name, b.Procs, b.Iterations, b.Pkg)
		}
	}
	want := []string{"BenchmarkLadder/b-wireguard-go", "BenchmarkLadder/n-nebula",
		"BenchmarkLadder/d-weft-10k-rules-100k-flows", "BenchmarkLadder/e-weft-hairpin"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("names %q, want %q", names, want)
	}
	b := r.Benchmarks[0]
	if len(b.Metrics) != 22 {
		t.Errorf("b has %d metrics, want 22: %v", len(b.Metrics), b.Metrics)
	}
	if b.Metrics[0] != (Metric{27981206200, "ns/op"}) || b.Metrics[1] != (Metric{0.4018, "Gbit/s-tcp1"}) ||
		b.Metrics[21] != (Metric{859.5, "us-rtt-p99"}) {
		t.Errorf("b metrics %v", b.Metrics)
	}
	for _, c := range []struct {
		i    int
		unit string
		v    float64
	}{{2, "rules", 5000}, {2, "flows", 100000}, {2, "MB-rss-flows", 60.93}, {3, "x-b-tcp4", 11.42}, {1, "MB-rss-peak", 28.27}} {
		if v, ok := r.Benchmarks[c.i].Get(c.unit); !ok || v != c.v {
			t.Errorf("%s %s = %v %v, want %v", r.Benchmarks[c.i].Name, c.unit, v, ok, c.v)
		}
	}
	if _, ok := r.Benchmarks[3].Get("us-rtt-p50"); ok {
		t.Error("e has no us-rtt-p50")
	}
	if r.Config["cpu"] != "Oxide Virtual Turin-like Processor" || r.Config["goos"] != "linux" || r.Config["goarch"] != "amd64" {
		t.Errorf("config %q", r.Config)
	}
	if r.Status != "ok" {
		t.Errorf("status %q, want ok", r.Status)
	}
}

// Benchmarks with ns/op only, each followed by its log lines.
func TestParseNsOnly(t *testing.T) {
	r := load(t, "datapath.txt")
	if len(r.Benchmarks) != 12 {
		t.Fatalf("%d benchmarks, want 12", len(r.Benchmarks))
	}
	if b := r.Benchmarks[0]; b.Name != "BenchmarkDataPath/round0-upstream" || len(b.Metrics) != 1 || b.Metrics[0] != (Metric{5918912796, "ns/op"}) {
		t.Errorf("first %+v", b)
	}
	if v, _ := r.Benchmarks[11].Get("Gbit/s-tcp1"); v != 1.168 {
		t.Errorf("inline Gbit/s-tcp1 = %v", v)
	}
}

// A failed run keeps its lines and says FAIL; a name printed alone (before
// logs) is not a result; a garbled line is left out and named, the others
// kept.
func TestParseFailAndGarbled(t *testing.T) {
	in := "pkg: p\nBenchmarkA-4   \t3\t10 ns/op\t2.5 MB/s\n" +
		"BenchmarkB/x\n" +
		"BenchmarkC-4 1 oops Gbit/s\n" +
		"BenchmarkD 7 1 ns/op 3\n" +
		"BenchmarkE-4 2 4 ns/op\n" +
		"--- FAIL: BenchmarkF\nFAIL\nFAIL\tp\t3.1s\n"
	r, err := Parse(strings.NewReader(in))
	if err == nil || !strings.Contains(err.Error(), "line 4: BenchmarkC-4: value \"oops\"") || !strings.Contains(err.Error(), "line 5: BenchmarkD: odd number") {
		t.Errorf("err %v", err)
	}
	if r == nil {
		t.Fatal("no result with the error")
	}
	want := []Benchmark{
		{Name: "BenchmarkA", Procs: 4, Pkg: "p", Iterations: 3, Metrics: []Metric{{10, "ns/op"}, {2.5, "MB/s"}}},
		{Name: "BenchmarkE", Procs: 4, Pkg: "p", Iterations: 2, Metrics: []Metric{{4, "ns/op"}}},
	}
	if !reflect.DeepEqual(r.Benchmarks, want) {
		t.Errorf("benchmarks %+v\nwant %+v", r.Benchmarks, want)
	}
	if r.Status != "FAIL" {
		t.Errorf("status %q", r.Status)
	}
}

// Save names the file by date and commit; Load reads it back as it was,
// and reads go test output as well.
func TestSaveLoad(t *testing.T) {
	r := load(t, "ladder-b-n-d-e.txt")
	r.Commit = "f899e1d-dirty"
	r.Date = time.Date(2026, 12, 5, 9, 12, 3, 0, time.UTC)
	r.Command = "go test -run ^$ -bench Ladder -benchtime 1x ./bench/"
	r.Machine = Machine{CPU: "X", Cores: 2, Kernel: "6.8.0", LoadAvg: [3]float64{0.5, 1, 1.25}}
	dir := t.TempDir()
	p, err := r.Save(filepath.Join(dir, "results"))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p) != "2026-12-05T091203Z_f899e1d-dirty.json" {
		t.Errorf("file %s", p)
	}
	got, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("loaded %+v\nsaved %+v", got, r)
	}
	txt, err := Load(filepath.Join("testdata", "ladder-b-n-d-e.txt"))
	if err != nil || len(txt.Benchmarks) != 4 {
		t.Errorf("text load: %v, %d benchmarks", err, len(txt.Benchmarks))
	}
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"commit": 3}`), 0o644)
	if _, err := Load(filepath.Join(dir, "bad.json")); err == nil || !strings.Contains(err.Error(), "bad.json") {
		t.Errorf("bad json: %v", err)
	}
}

func TestMachineFields(t *testing.T) {
	info := "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9554 64-Core Processor\nprocessor\t: 1\nmodel name\t: AMD EPYC 9554 64-Core Processor\n"
	if m := cpuModel(info); m != "AMD EPYC 9554 64-Core Processor" {
		t.Errorf("cpu %q", m)
	}
	if l := loadAvg("0.52 1.07 2.00 3/412 12345\n"); l != [3]float64{0.52, 1.07, 2} {
		t.Errorf("loadavg %v", l)
	}
	m := ReadMachine()
	if m.Cores < 1 {
		t.Errorf("cores %d", m.Cores)
	}
}
