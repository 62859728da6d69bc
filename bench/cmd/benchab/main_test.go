package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		name string
		v    float64
		ok   bool
	}{
		{"BenchmarkVerdict/new/rules=10-2         	16917811	        66.02 ns/op	       0 B/op	       0 allocs/op", "BenchmarkVerdict/new/rules=10", 66.02, true},
		{"BenchmarkCompile/rules=100000-2 	      12	  92547186 ns/op	        36.39 MB/compile", "BenchmarkCompile/rules=100000", 92547186, true},
		{"BenchmarkX-a 10 5 ns/op", "BenchmarkX-a", 5, true}, // a dash not followed by GOMAXPROCS stays
		{"BenchmarkLadder/b-2 1 3.0 Gbit/s-tcp1", "", 0, false},
		{"PASS", "", 0, false},
		{"BenchmarkX-2 10 junk ns/op", "", 0, false},
	} {
		name, v, ok := parseLine(tc.line)
		if name != tc.name || v != tc.v || ok != tc.ok {
			t.Errorf("parseLine(%q) = %q, %v, %v; want %q, %v, %v", tc.line, name, v, ok, tc.name, tc.v, tc.ok)
		}
	}
}

// TestPairedDifferences: the differences pair the rounds, so a drift
// common to both sides cancels.
func TestPairedDifferences(t *testing.T) {
	res := results{}
	// The host drifts (old 60, 80, 70); new is 2 ns faster in two
	// rounds and 5 slower in one: its median is 5 above old's, but the
	// median of the paired differences is -2.
	old, nw := []float64{60, 80, 70}, []float64{58, 78, 75}
	for r := range old {
		if err := res.add("old", r, strings.NewReader(line(old[r]))); err != nil {
			t.Fatal(err)
		}
		if err := res.add("new", r, strings.NewReader(line(nw[r]))); err != nil {
			t.Fatal(err)
		}
	}
	if err := res.add("old", 3, strings.NewReader("PASS\n")); err == nil {
		t.Error("output without benchmark lines accepted")
	}
	var out bytes.Buffer
	res.print(&out)
	got := strings.Fields(strings.Split(out.String(), "\n")[1])
	want := []string{"BenchmarkV", "70.00", "75.00", "-2.00", "+0.33", "±", "4.04", "3"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %q, want %q", got, want)
	}
}

func line(v float64) string {
	return "BenchmarkV-2 100 " + strconv.FormatFloat(v, 'f', -1, 64) + " ns/op\n"
}

// TestAbsFlags: a flag's value that names a file by a relative path is
// made absolute (the build runs elsewhere); other values stay.
func TestAbsFlags(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("cpu.prof", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := absFlags([]string{"-pgo=cpu.prof", "-pgo=off", "-race", "-tags=x", "-gcflags=all=-N"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"-pgo=" + filepath.Join(dir, "cpu.prof"), "-pgo=off", "-race", "-tags=x", "-gcflags=all=-N"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("absFlags = %q, want %q", got, want)
	}
}
