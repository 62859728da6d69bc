// Command benchab compares a package's benchmarks at two revisions on a
// noisy machine: it builds the package's test binary at each, runs the
// two in turn for a number of rounds (the order swapped every round) and
// prints, for each benchmark, both medians and the paired differences of
// the rounds. A host whose speed drifts moves both runs of a round
// alike; the paired difference keeps what the change did.
//
//	go run ./bench/cmd/benchab -old HEAD~1 -pkg ./policy/engine \
//		-bench 'BenchmarkVerdict/new/rules=10000$' -rounds 16
//
// -new is a revision too, or "" (the default) for the working tree.
// Revisions are checked out with `git worktree add` in a temporary
// directory, removed at the end. -oldflags and -newflags add build flags
// to one side, so that one revision built two ways compares the builds:
//
//	go run ./bench/cmd/benchab -old HEAD -new HEAD -newflags -pgo=cpu.prof ...
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The package's benchmarks run in its directory in the working tree
// (its testdata), whichever revision the binary was built from.
func main() {
	oldRev := flag.String("old", "HEAD", "baseline revision")
	newRev := flag.String("new", "", `revision to compare, "" for the working tree`)
	pkg := flag.String("pkg", "./policy", "package whose benchmarks run (a directory, from the module's root)")
	bench := flag.String("bench", ".", "-test.bench pattern")
	benchtime := flag.String("benchtime", "1s", "-test.benchtime")
	rounds := flag.Int("rounds", 10, "rounds (each runs both binaries once)")
	oldFlags := flag.String("oldflags", "", `build flags of the baseline, space-separated (e.g. "-pgo=cpu.prof")`)
	newFlags := flag.String("newflags", "", "build flags of the revision compared")
	flag.Parse()
	flags := map[string][]string{"old": strings.Fields(*oldFlags), "new": strings.Fields(*newFlags)}
	if err := run(*oldRev, *newRev, flags, *pkg, *bench, *benchtime, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "benchab:", err)
		os.Exit(1)
	}
}

// run builds both binaries in a temporary directory, which it removes
// whatever happens, runs the rounds and prints the comparison. flags are
// each side's build flags.
func run(oldRev, newRev string, flags map[string][]string, pkg, bench, benchtime string, rounds int) error {
	if rounds < 2 {
		return fmt.Errorf("-rounds must be at least 2")
	}
	tmp, err := os.MkdirTemp("", "benchab")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bins := map[string]string{}
	for side, rev := range map[string]string{"old": oldRev, "new": newRev} {
		if bins[side], err = build(rev, flags[side], pkg, tmp, side); err != nil {
			return err
		}
	}

	res := results{}
	for r := range rounds {
		order := []string{"old", "new"}
		if r%2 == 1 {
			order = []string{"new", "old"}
		}
		for _, side := range order {
			cmd := exec.Command(bins[side], "-test.run", "^$", "-test.bench", bench, "-test.benchtime", benchtime)
			cmd.Dir = pkg
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("round %d, %s: %v\n%s", r+1, side, err, out)
			}
			if err := res.add(side, r, bytes.NewReader(out)); err != nil {
				return fmt.Errorf("round %d, %s: %v", r+1, side, err)
			}
			fmt.Fprintf(os.Stderr, "round %d/%d %s done\n", r+1, rounds, side)
		}
	}
	fmt.Printf("old %s%s, new %s%s, %d rounds of %s, %s\n", oldRev, withFlags(flags["old"]), orTree(newRev), withFlags(flags["new"]), rounds, benchtime, pkg)
	res.print(os.Stdout)
	return nil
}

func withFlags(flags []string) string {
	if len(flags) == 0 {
		return ""
	}
	return " (" + strings.Join(flags, " ") + ")"
}

func orTree(rev string) string {
	if rev == "" {
		return "working tree"
	}
	return rev
}

// build compiles pkg's test binary at rev ("" for the working tree), with
// the build flags, into dir and returns its path. A relative file in a
// flag (-pgo=cpu.prof) is the caller's, not the revision's.
func build(rev string, flags []string, pkg, dir, name string) (string, error) {
	bin := filepath.Join(dir, name+".test")
	src := "."
	if rev != "" {
		src = filepath.Join(dir, name+"-src")
		if out, err := exec.Command("git", "worktree", "add", "--detach", src, rev).CombinedOutput(); err != nil {
			return "", fmt.Errorf("git worktree add %s: %v\n%s", rev, err, out)
		}
		defer exec.Command("git", "worktree", "remove", "--force", src).Run()
	}
	flags, err := absFlags(flags)
	if err != nil {
		return "", err
	}
	args := append(append([]string{"test", "-c", "-o", bin}, flags...), pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s at %s: %v\n%s", pkg, orTree(rev), err, out)
	}
	return bin, nil
}

// results holds ns/op by benchmark, side ("old", "new") and round.
type results map[string]map[string]map[int]float64

// add reads `go test -bench` output of one side's run in round r.
func (res results) add(side string, r int, out io.Reader) error {
	n := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		name, v, ok := parseLine(sc.Text())
		if !ok {
			continue
		}
		if res[name] == nil {
			res[name] = map[string]map[int]float64{"old": {}, "new": {}}
		}
		res[name][side][r] = v
		n++
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("no benchmark lines in the output")
	}
	return nil
}

// parseLine returns the name (without the -GOMAXPROCS suffix) and ns/op of
// a benchmark result line.
func parseLine(l string) (string, float64, bool) {
	f := strings.Fields(l)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
		return "", 0, false
	}
	for i := 2; i+1 < len(f); i++ {
		if f[i+1] == "ns/op" {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return "", 0, false
			}
			name := f[0]
			if j := strings.LastIndexByte(name, '-'); j > 0 {
				if _, err := strconv.Atoi(name[j+1:]); err == nil {
					name = name[:j]
				}
			}
			return name, v, true
		}
	}
	return "", 0, false
}

func (res results) print(w io.Writer) {
	names := make([]string, 0, len(res))
	for n := range res {
		names = append(names, n)
	}
	slices.Sort(names)
	fmt.Fprintf(w, "%-50s %10s %10s %10s %16s %6s\n", "benchmark (ns/op)", "old med", "new med", "diff med", "diff mean±sd", "pairs")
	for _, n := range names {
		old, nw := res[n]["old"], res[n]["new"]
		var o, v, d []float64
		for r, x := range old {
			if y, ok := nw[r]; ok {
				o, v, d = append(o, x), append(v, y), append(d, y-x)
			}
		}
		if len(d) == 0 {
			continue
		}
		m, sd := meanSD(d)
		fmt.Fprintf(w, "%-50s %10.2f %10.2f %+10.2f %+8.2f ±%6.2f %6d\n", n, median(o), median(v), median(d), m, sd, len(d))
	}
}

func median(x []float64) float64 {
	s := slices.Clone(x)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func meanSD(x []float64) (mean, sd float64) {
	for _, v := range x {
		mean += v
	}
	mean /= float64(len(x))
	if len(x) < 2 {
		return mean, 0
	}
	for _, v := range x {
		sd += (v - mean) * (v - mean)
	}
	return mean, math.Sqrt(sd / float64(len(x)-1))
}

// absFlags returns flags with the value of each -flag=value that names an
// existing file by a relative path made absolute: the build runs in the
// revision's worktree, the path is the caller's.
func absFlags(flags []string) ([]string, error) {
	out := make([]string, 0, len(flags))
	for _, f := range flags {
		if k, v, ok := strings.Cut(f, "="); ok && v != "" && !filepath.IsAbs(v) {
			if st, err := os.Stat(v); err == nil && !st.IsDir() {
				abs, err := filepath.Abs(v)
				if err != nil {
					return nil, err
				}
				f = k + "=" + abs
			}
		}
		out = append(out, f)
	}
	return out, nil
}
