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

// TestDroppableRanges: only the executable's mappings that are not
// writable and hold no copied-on-write page.
func TestDroppableRanges(t *testing.T) {
	const smaps = `00400000-00b69000 r-xp 00000000 fe:00 123 /usr/bin/weft
Size:               7556 kB
Rss:                7556 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
00b69000-01328000 r--p 00769000 fe:00 123 /usr/bin/weft
Size:               8060 kB
Anonymous:             0 kB
01328000-01390000 rw-p 00f28000 fe:00 123 /usr/bin/weft
Anonymous:           120 kB
01390000-013a0000 r--p 00f90000 fe:00 123 /usr/bin/weft
Anonymous:             8 kB
013a0000-013b0000 r--p 00000000 fe:00 456 /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
`
	got := droppableRanges([]byte(smaps), "/usr/bin/weft")
	want := [][2]uint64{{0x400000, 0xb69000}, {0xb69000, 0x1328000}}
	if len(got) != len(want) {
		t.Fatalf("ranges %x, want %x", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("range %d: %x, want %x", i, got[i], want[i])
		}
	}
}
