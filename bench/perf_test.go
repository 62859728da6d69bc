package bench

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var ladderPerf = flag.String("ladder.perf", "", "record the whole machine (perf record -a -g) during the single-stream TCP test of rungs b, c, d and n into this directory and report where its time went, and during their UDP 64 B test (DIR/RUNG-udp64.perf.data) and their request/response tests (DIR/RUNG-rr1, -rr32, -crr.perf.data)")

var ladderPerfEvents = flag.String("ladder.perfevents", "", "with -ladder.perf: record these perf events (comma-separated, e.g. raw_syscalls:sys_enter,sched:sched_switch) instead of CPU samples, and skip the single stream's shares; count them with perf script -F comm,event")

// machineShares is where the whole machine's time went while perf
// recorded, as fractions of every sample on every CPU (idle included).
type machineShares struct {
	aead   float64 // ChaCha20-Poly1305 seal and open (the AVX2 assembly)
	kernel float64 // kernel code that is not the idle loop: system calls, TCP, veth, TUN, softirqs
	user   float64 // all other user-space code: Go runtime, wireguard-go, weft, the test's TCP endpoints
	idle   float64 // the idle loop
}

// idleSymbols are the kernel's idle-loop functions: a CPU sampled in one
// of them had nothing to run.
var idleSymbols = map[string]bool{
	"pv_native_safe_halt": true, "native_safe_halt": true, "default_idle": true,
	"cpu_idle_poll": true, "acpi_safe_halt": true, "mwait_idle_with_hints": true,
	"intel_idle": true, "acpi_idle_do_entry": true, "pvm_safe_halt_hc": true,
}

// perfRecorder starts perf recording every CPU into dir/tag.perf.data for
// d and returns a function that waits for it. Without perf on the PATH it
// logs why and returns nil.
func perfRecorder(b *testing.B, dir, tag string, d time.Duration) func() (string, error) {
	bin, err := exec.LookPath("perf")
	if err != nil {
		b.Logf("-ladder.perf: no perf on PATH (apt-get install linux-perf): %v", err)
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(dir, tag+".perf.data")
	var stderr bytes.Buffer
	args := []string{"record", "-a", "-g", "-F", "999"}
	if *ladderPerfEvents != "" {
		args = []string{"record", "-a"}
		for e := range strings.SplitSeq(*ladderPerfEvents, ",") {
			args = append(args, "-e", e)
		}
	}
	args = append(args, "-o", out, "--", "sleep", strconv.FormatFloat(d.Seconds(), 'f', 3, 64))
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Logf("-ladder.perf: %v", err)
		return nil
	}
	return func() (string, error) {
		if err := cmd.Wait(); err != nil {
			return "", fmt.Errorf("perf record: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
		}
		return out, nil
	}
}

// perfShares reads a recording's samples by symbol (perf report) and sorts
// them into machineShares.
func perfShares(file string) (machineShares, error) {
	out, err := exec.Command("perf", "report", "-i", file, "--stdio", "--no-children",
		"-g", "none", "--sort", "sym", "--percent-limit", "0").Output()
	if err != nil {
		return machineShares{}, fmt.Errorf("perf report -i %s: %v", file, err)
	}
	return parsePerfReport(out)
}

// parsePerfReport sorts the lines of `perf report --sort sym -g none`
// ("  10.25%  [.] golang.org/x/crypto/chacha20poly1305.chacha20Poly1305Seal.abi0")
// into machineShares.
func parsePerfReport(out []byte) (machineShares, error) {
	var s machineShares
	var total float64
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || strings.HasPrefix(f[0], "#") || !strings.HasSuffix(f[0], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if err != nil {
			return s, fmt.Errorf("perf report line %q: %v", sc.Text(), err)
		}
		v, mode, sym := pct/100, f[1], f[2]
		total += v
		switch {
		case mode == "[k]" && idleSymbols[sym]:
			s.idle += v
		case mode == "[k]":
			s.kernel += v
		case strings.Contains(sym, "chacha20Poly1305Seal") || strings.Contains(sym, "chacha20Poly1305Open"):
			s.aead += v
		default:
			s.user += v
		}
	}
	if total < 0.9 {
		return s, fmt.Errorf("perf report: the symbols add up to %.0f%% of the samples", total*100)
	}
	return s, nil
}

// reportShares reports where the machine's time went during a rung's
// single stream of gbps and the throughput of a data path that kept the
// kernel's work and the AEAD and spent nothing else in user space on all
// of the machine's CPUs: gbps / (aead + kernel).
func reportShares(b *testing.B, s machineShares, gbps float64) float64 {
	b.ReportMetric(s.aead*100, "pct-aead-tcp1")
	b.ReportMetric(s.kernel*100, "pct-kernel-tcp1")
	b.ReportMetric(s.user*100, "pct-user-tcp1")
	b.ReportMetric(s.idle*100, "pct-idle-tcp1")
	bound := gbps / (s.aead + s.kernel)
	b.Logf("whole machine during tcp1 (%.2f Gbit/s): AEAD %.1f%%, kernel %.1f%%, other user space %.1f%%, idle %.1f%%; AEAD and kernel alone: %.2f Gbit/s",
		gbps, s.aead*100, s.kernel*100, s.user*100, s.idle*100, bound)
	b.ReportMetric(bound, "Gbit/s-tcp1-bound")
	return bound
}
