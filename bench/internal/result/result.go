// Package result is a benchmark run as data: the lines `go test -bench`
// printed, parsed into benchmarks and their metrics, with the commit, date,
// machine and command that produced them. `make bench` writes one as JSON
// under bench/results/ (bench/cmd/benchtable -save); benchtable renders
// and compares them.
package result

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Result is one run.
type Result struct {
	Commit  string    `json:"commit"` // git describe --always --dirty
	Date    time.Time `json:"date"`   // start of the run, UTC
	Machine Machine   `json:"machine"`
	Command string    `json:"command"` // the go test command and its flags
	// Config holds go test's "key: value" header lines (goos, goarch,
	// pkg, cpu), the last value of each.
	Config     map[string]string `json:"config,omitempty"`
	Benchmarks []Benchmark       `json:"benchmarks"`
	// Status is go test's verdict: "ok" or "FAIL" (its last such line),
	// "" if the input had none (cut short).
	Status string `json:"status"`
}

// Machine describes the host at the start of the run.
type Machine struct {
	CPU     string     `json:"cpu"`     // model name from /proc/cpuinfo
	Cores   int        `json:"cores"`   // runtime.NumCPU
	Kernel  string     `json:"kernel"`  // /proc/sys/kernel/osrelease
	LoadAvg [3]float64 `json:"loadavg"` // 1, 5 and 15 minutes
}

// Benchmark is one benchmark line.
type Benchmark struct {
	Name       string   `json:"name"`            // as printed, without the -GOMAXPROCS suffix
	Procs      int      `json:"procs,omitempty"` // the GOMAXPROCS suffix, 0 if none
	Pkg        string   `json:"pkg,omitempty"`   // the pkg: header it was printed under
	Iterations int64    `json:"iterations"`
	Metrics    []Metric `json:"metrics"` // in the order printed
}

// Metric is one value-unit pair of a benchmark line.
type Metric struct {
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// Get is the benchmark's value in unit.
func (b Benchmark) Get(unit string) (float64, bool) {
	for _, m := range b.Metrics {
		if m.Unit == unit {
			return m.Value, true
		}
	}
	return 0, false
}

// Parse reads go test -bench output (the standard benchmark format:
// name, iterations, then value-unit pairs) and returns the result with
// Config, Benchmarks and Status filled in. Lines that are not benchmark
// results (logs, --- BENCH blocks) are skipped. A line that starts like
// one (name, iteration count) but whose metrics do not parse is left out
// and named, with its line number, in the error; the result still holds
// every other line, so that one garbled line does not lose a long run.
func Parse(r io.Reader) (*Result, error) {
	res := &Result{Config: map[string]string{}}
	var bad []error
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "Benchmark"):
			b, ok, err := parseLine(line)
			if err != nil {
				bad = append(bad, fmt.Errorf("line %d: %w", n, err))
				continue
			}
			if ok {
				b.Pkg = res.Config["pkg"]
				res.Benchmarks = append(res.Benchmarks, b)
			}
		case line == "PASS" || strings.HasPrefix(line, "ok "):
			res.Status = "ok"
		case line == "FAIL" || strings.HasPrefix(line, "FAIL\t"):
			res.Status = "FAIL"
		default:
			if k, v, ok := configLine(line); ok {
				res.Config[k] = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return res, errors.Join(bad...)
}

// configLine is a header line such as "cpu: AMD EPYC".
func configLine(line string) (key, value string, ok bool) {
	k, v, ok := strings.Cut(line, ":")
	if !ok || k == "" || strings.ContainsAny(k, " \t") || k != strings.ToLower(k) {
		return "", "", false
	}
	return k, strings.TrimSpace(v), true
}

// parseLine parses "BenchmarkX/y-2  1  5 ns/op  3.00 Gbit/s-tcp1". ok is
// false for a line that only names a benchmark (printed before its logs,
// or by -v) and has no result.
func parseLine(line string) (b Benchmark, ok bool, err error) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return b, false, nil
	}
	it, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		// "BenchmarkX/y" followed by a log line's text, not a result.
		return b, false, nil
	}
	b.Name, b.Procs = f[0], 0
	if i := strings.LastIndexByte(b.Name, '-'); i > 0 {
		if p, err := strconv.Atoi(b.Name[i+1:]); err == nil {
			b.Name, b.Procs = b.Name[:i], p
		}
	}
	b.Iterations = it
	if (len(f)-2)%2 != 0 {
		return b, false, fmt.Errorf("%s: odd number of value-unit fields", f[0])
	}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return b, false, fmt.Errorf("%s: value %q of %s: not a number", f[0], f[i], f[i+1])
		}
		b.Metrics = append(b.Metrics, Metric{v, f[i+1]})
	}
	return b, true, nil
}

// Load reads a result file, or go test output if the file does not start
// with '{' (then, as with Parse, a result may come with an error).
func Load(path string) (*Result, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
		res, err := Parse(bytes.NewReader(data))
		if err != nil {
			return res, fmt.Errorf("%s: %w", path, err)
		}
		return res, nil
	}
	var res Result
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &res, nil
}

// FileName is the result's file name: UTC date-time and commit, so that
// a directory listing is in time order.
func (r *Result) FileName() string {
	c := r.Commit
	if c == "" {
		c = "unknown"
	}
	return r.Date.UTC().Format("2006-01-02T150405Z") + "_" + strings.NewReplacer("/", "-", " ", "-").Replace(c) + ".json"
}

// Save writes the result as indented JSON into dir (created if missing)
// and returns the file's path.
func (r *Result) Save(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, r.FileName())
	return p, os.WriteFile(p, append(data, '\n'), 0o644)
}

// ReadMachine describes this host now; what it cannot read stays empty.
func ReadMachine() Machine {
	m := Machine{Cores: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPU = cpuModel(string(b))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = loadAvg(string(b))
	}
	return m
}

func cpuModel(cpuinfo string) string {
	for _, l := range strings.Split(cpuinfo, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func loadAvg(s string) (l [3]float64) {
	f := strings.Fields(s)
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

// Commit is `git describe --always --dirty` in dir, or "" if git cannot
// tell.
func Commit(dir string) string {
	cmd := exec.Command("git", "describe", "--always", "--dirty")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
