package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/internal/lab"
)

var scaleRules = flag.Int("scale.rules", 100000, "rules BenchmarkPolicyScale pushes")

// BenchmarkPolicyScale pushes a policy file of -scale.rules rules to cell
// 1 of a two-cell lab with `weft policy push`, waits until both cells hold
// every rule, and then measures each idle agent's CPU over 30 s
// (/proc/PID/stat). It reports the push time, the time until cell 2 had
// them all, the agents' CPU in percent of a core, and their resident
// memory at the end (VmRSS) and at its peak (VmHWM), in MB.
func BenchmarkPolicyScale(b *testing.B) {
	lab.RequireRoot(b)
	l := lab.Setup(b, lab.Config{Cells: 2, WeftBin: weftBin})
	n := *scaleRules
	var sb strings.Builder
	sb.WriteString("policies:\n")
	for i := range n {
		fmt.Fprintf(&sb, "- source: app%05d\n  destination: dst%03d\n  protocol: tcp\n  ports: \"%d\"\n", i/2, i%97, 1+i%60000)
	}
	file := filepath.Join(b.TempDir(), "policies.yaml")
	if err := os.WriteFile(file, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	// Not l.Weft: its 30 s timeout is for single commands.
	c1 := l.Cells[0]
	cmd := exec.Command("nsenter", "--net=/run/netns/"+c1.Netns, weftBin, "--socket", c1.Socket, "policy", "push", file)
	cmd.Env = append(os.Environ(), "WEFT_OPERATOR_KEY="+l.OperatorKey())
	t0 := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("weft policy push: %v: %s", err, out[max(0, len(out)-1000):])
	}
	pushed := time.Since(t0)
	for {
		have := make([]int, len(l.Cells))
		all := true
		for i, c := range l.Cells {
			st, err := cellapi.NewClient(c.Socket).Status(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			have[i] = st.Policies
			all = all && st.Policies >= n
		}
		if all {
			break
		}
		if time.Since(t0) > pushed+3*time.Minute {
			b.Fatalf("3 min after the push the cells hold %v of %d rules", have, n)
		}
		time.Sleep(500 * time.Millisecond)
	}
	everywhere := time.Since(t0)
	b.ReportMetric(pushed.Seconds(), "s-push")
	b.ReportMetric((everywhere - pushed).Seconds(), "s-converge")

	time.Sleep(6 * time.Second)
	const idle = 30 * time.Second
	cpu0 := make([]float64, len(l.Cells))
	for i, c := range l.Cells {
		cpu0[i] = procCPUSeconds(b, c.PID())
	}
	time.Sleep(idle)
	for i, c := range l.Cells {
		pct := (procCPUSeconds(b, c.PID()) - cpu0[i]) / idle.Seconds() * 100
		b.ReportMetric(pct, fmt.Sprintf("cpu%%-idle-cell%d", i+1))
		m := procMem(c.PID())
		b.ReportMetric(float64(m.rss)/1e6, fmt.Sprintf("MB-rss-idle-cell%d", i+1))
		b.ReportMetric(float64(m.hwm)/1e6, fmt.Sprintf("MB-rss-peak-cell%d", i+1))
	}
}

// procCPUSeconds is the CPU time (user + system) process pid has used.
func procCPUSeconds(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // after "pid (comm) "
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	var sum float64
	for _, x := range f[11:13] { // utime, stime: fields 14 and 15
		v, err := strconv.ParseFloat(x, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		sum += v
	}
	return sum / 100 // clock ticks (USER_HZ)
}
