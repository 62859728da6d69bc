package bench

// -ladder.mem: where an agent's resident memory is, at rung d's points
// (idle, 100k flows, after each test). For each agent it logs VmRSS,
// VmHWM, threads, the resident KiB of its mappings by kind (/proc/PID/smaps)
// and the Go runtime's memory (the agent's go_memstats_* metrics, served
// with --metrics-addr on the loopback of its namespace).

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

var ladderMem = flag.String("ladder.mem", "", "append where the weft agents' resident memory is (smaps by kind, Go runtime memory) at each point of rung d to this file")

const metricsAt = "127.0.0.1:9465"

// memPoint, when set, logs the agents' memory after each test of a rung.
var memPoint func(point string)

// markMem calls memPoint, if set, at point.
func markMem(point string) {
	if memPoint != nil {
		memPoint(point)
	}
}

// memArgs are the agent flags -ladder.mem needs.
func memArgs() []string {
	if *ladderMem == "" {
		return nil
	}
	return []string{"--metrics-addr", metricsAt}
}

// logMem logs both agents' memory at point (with -ladder.mem).
func logMem(b *testing.B, l *lab.Lab, point string) {
	out := openMemLog(b)
	if out == nil {
		return
	}
	defer out.Close()
	for _, c := range l.Cells[:2] {
		pid := c.PID()
		if pid == 0 {
			continue
		}
		pm := procMem(pid)
		k := smapsByKind(pid)
		var rt strings.Builder
		if code, body, err := lab.HTTPGetIn(c.Netns, "http://"+metricsAt+"/metrics", 2*time.Second); err == nil && code == 200 {
			for _, line := range strings.Split(body, "\n") {
				for _, name := range []string{"heap_inuse", "heap_idle", "heap_released", "stack_inuse", "mspan_inuse", "gc_sys", "other_sys", "next_gc"} {
					if v, ok := strings.CutPrefix(line, "go_memstats_"+name+"_bytes "); ok {
						f, _ := strconv.ParseFloat(v, 64)
						fmt.Fprintf(&rt, " %s=%.1f", name, f/(1<<20))
					}
				}
				if v, ok := strings.CutPrefix(line, "go_gc_duration_seconds_count "); ok {
					fmt.Fprintf(&rt, " gcs=%s", v)
				}
				if v, ok := strings.CutPrefix(line, "go_threads "); ok {
					fmt.Fprintf(&rt, " threads=%s", v)
				}
			}
		}
		fmt.Fprintf(out, "%s cell%d: rss=%.1f hwm=%.1f anon=%.1f file=%.1f MB; resident by kind (MB):%s; runtime (MB):%s",
			point, c.Index, float64(pm.rss)/(1<<20), float64(pm.hwm)/(1<<20), float64(pm.anon)/(1<<20), float64(pm.file)/(1<<20), k, rt.String())
		fmt.Fprintln(out)
	}
}

// traceMem appends both agents' VmRSS and RssFile every half second for
// d to the -ladder.mem file: how an agent's memory settles after start.
func traceMem(b *testing.B, l *lab.Lab, point string, d time.Duration) {
	out := openMemLog(b)
	if out == nil {
		return
	}
	defer out.Close()
	start := time.Now()
	for t := time.Duration(0); t <= d; t += 500 * time.Millisecond {
		time.Sleep(time.Until(start.Add(t)))
		fmt.Fprintf(out, "%s +%.1fs:", point, t.Seconds())
		for _, c := range l.Cells[:2] {
			m := procMem(c.PID())
			fmt.Fprintf(out, " cell%d rss=%.1f file=%.1f", c.Index, float64(m.rss)/(1<<20), float64(m.file)/(1<<20))
		}
		fmt.Fprintln(out)
	}
}

// smapsByKind sums the Rss of pid's mappings by kind: the binary's text,
// read-only data and data (file-backed); the message buffers (the largest
// anonymous read-write mapping: 48 MiB at the default, kernel-merged
// neighbours included); the other anonymous mappings (the Go heap arenas,
// at a random address since Go 1.26, and the runtime's metadata); the
// rest. Then the four largest other anonymous mappings by Rss.
func smapsByKind(pid int) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return " " + err.Error()
	}
	defer f.Close()
	type vma struct {
		lo, hi     uint64
		perm, path string
		rss        int64 // KiB
	}
	var vmas []vma
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 {
			continue
		}
		if lohi := strings.SplitN(fs[0], "-", 2); len(lohi) == 2 && len(fs) >= 5 {
			lo, err1 := strconv.ParseUint(lohi[0], 16, 64)
			hi, err2 := strconv.ParseUint(lohi[1], 16, 64)
			if err1 == nil && err2 == nil {
				v := vma{lo: lo, hi: hi, perm: fs[1]}
				if len(fs) >= 6 {
					v.path = fs[5]
				}
				vmas = append(vmas, v)
				continue
			}
		}
		if fs[0] == "Rss:" && len(vmas) > 0 && len(fs) >= 2 {
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			vmas[len(vmas)-1].rss = kb
		}
	}
	anonRW := func(v vma) bool { return v.path == "" && strings.HasPrefix(v.perm, "rw") }
	big := -1
	for i, v := range vmas {
		if anonRW(v) && (big < 0 || v.hi-v.lo > vmas[big].hi-vmas[big].lo) {
			big = i
		}
	}
	sum := map[string]int64{}
	var others []vma
	for i, v := range vmas {
		kind := "other"
		switch {
		case strings.HasPrefix(v.path, "/") && strings.Contains(v.perm, "x"):
			kind = "text"
		case strings.HasPrefix(v.path, "/") && strings.Contains(v.perm, "w"):
			kind = "data"
		case strings.HasPrefix(v.path, "/"):
			kind = "rodata"
		case i == big:
			kind = "msgbufs"
		case v.path == "":
			kind = "anon"
			others = append(others, v)
		}
		sum[kind] += v.rss
	}
	var s strings.Builder
	for _, k := range []string{"text", "rodata", "data", "msgbufs", "anon", "other"} {
		fmt.Fprintf(&s, " %s=%.1f", k, float64(sum[k])/1024)
	}
	if big >= 0 {
		fmt.Fprintf(&s, " (msgbufs: %x, %d MiB; %s)", vmas[big].lo, (vmas[big].hi-vmas[big].lo)>>20, bufDepths(pid, vmas[big].lo, vmas[big].hi))
	}
	slices.SortFunc(others, func(a, b vma) int { return int(b.rss - a.rss) })
	s.WriteString("; largest anon:")
	for _, v := range others[:min(4, len(others))] {
		fmt.Fprintf(&s, " %x+%dK=%.1f", v.lo, (v.hi-v.lo)>>10, float64(v.rss)/1024)
	}
	return s.String()
}

// bufDepths reads /proc/pid/pagemap over [lo, hi), the message buffers'
// mapping, and says how many 64 KiB buffers have how many pages present:
// "pages:buffers ...".
func bufDepths(pid int, lo, hi uint64) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	const page, buf = 4096, 64 << 10
	entries := make([]byte, (hi-lo)/page*8)
	if _, err := f.ReadAt(entries, int64(lo/page*8)); err != nil {
		return err.Error()
	}
	var hist [buf/page + 1]int
	for b := 0; b < len(entries)/8/(buf/page); b++ {
		n := 0
		for p := range buf / page {
			e := entries[(b*(buf/page)+p)*8:]
			if e[7]&0x80 != 0 { // bit 63: present
				n++
			}
		}
		hist[n]++
	}
	var s strings.Builder
	s.WriteString("pages:buffers")
	for n, c := range hist {
		if c > 0 && n > 0 {
			fmt.Fprintf(&s, " %d:%d", n, c)
		}
	}
	return s.String()
}

// openMemLog opens the -ladder.mem file for appending, or returns nil
// without the flag.
func openMemLog(b *testing.B) *os.File {
	if *ladderMem == "" {
		return nil
	}
	out, err := os.OpenFile(*ladderMem, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	return out
}
