package main

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dropExecutablePages drops this process's page-table entries for the
// read-only mappings of its executable (text, rodata, pclntab), so that
// only the pages it touches again count in its RSS. The pages stay in the
// page cache: a later access is a minor fault. It returns the bytes of
// the mappings it advised.
func dropExecutablePages() int64 {
	exe, err := os.Executable()
	if err != nil {
		return 0
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0
	}
	var n int64
	for _, r := range droppableRanges(smaps, exe) {
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(r[0]), uintptr(r[1]-r[0]), unix.MADV_DONTNEED); e == 0 {
			n += int64(r[1] - r[0])
		}
	}
	return n
}

// droppableRanges are the [start, end) of exe's mappings in smaps that are
// not writable and hold no anonymous (copied-on-write) page: MADV_DONTNEED
// would revert such a page to the file's contents (a RELRO region the
// dynamic linker relocated, a breakpoint a debugger set).
func droppableRanges(smaps []byte, exe string) [][2]uint64 {
	var out [][2]uint64
	var cur [2]uint64
	ok := false
	flush := func() {
		if ok {
			out = append(out, cur)
		}
		ok = false
	}
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if lo, hi, isRange := strings.Cut(f[0], "-"); isRange && len(f) >= 5 && !strings.HasSuffix(f[0], ":") {
			flush()
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			ok = err1 == nil && err2 == nil && end > start && len(f) >= 6 && f[5] == exe && len(f[1]) >= 2 && f[1][1] != 'w'
			cur = [2]uint64{start, end}
			continue
		}
		if f[0] == "Anonymous:" && len(f) >= 2 && f[1] != "0" {
			ok = false
		}
	}
	flush()
	return out
}
