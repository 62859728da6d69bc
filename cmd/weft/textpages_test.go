package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// exeRSS is the resident KiB of this process's read-only mappings of its
// executable, from /proc/self/smaps.
func exeRSS(t *testing.T) int64 {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var kb int64
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 5 && strings.Contains(fs[0], "-") && !strings.HasSuffix(fs[0], ":") {
			in = len(fs) >= 6 && fs[5] == exe && fs[1][1] != 'w'
			continue
		}
		if in && len(fs) >= 2 && fs[0] == "Rss:" {
			n, _ := strconv.ParseInt(fs[1], 10, 64)
			kb += n
		}
	}
	return kb
}

// TestDropExecutablePages: after the drop, the executable's text and
// rodata count in RSS only for the pages touched since.
func TestDropExecutablePages(t *testing.T) {
	before := exeRSS(t)
	if before < 2<<10 {
		t.Skipf("only %d KiB of the executable resident: nothing to check", before)
	}
	if n := dropExecutablePages(); n < before<<10 {
		t.Fatalf("advised %d bytes, less than the %d KiB resident", n, before)
	}
	if after := exeRSS(t); after > before/2 {
		t.Errorf("executable resident: %d KiB before the drop, %d after, want at most half", before, after)
	}
}
