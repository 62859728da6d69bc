package bench

// Request/response tests of the ladder (issue 21): TCP transactions of a
// 1-byte request and its 1-byte answer, on one connection, on 32 at once,
// and on a new connection each (32 at once), whose SYN takes the
// new-flow verdict of a firewall. The client is bench/internal/tcprr, run
// in the client namespace; the echo server runs in this process.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

const (
	rrPort  = tcpPort + 2 // one connection; rrPort+1: 32 connections; rrPort+2: new connections
	rrConns = 32
)

// rrResult is one request/response test: transactions per second and the
// machine's busy cores meanwhile.
type rrResult struct{ tps, cores float64 }

// buildTool builds the command in dir (relative to bench/) into a
// directory removed when b ends, and returns its path.
func buildTool(b *testing.B, dir string) string {
	bin := filepath.Join(b.TempDir(), filepath.Base(dir))
	if out, err := exec.Command("go", "build", "-o", bin, dir).CombinedOutput(); err != nil {
		b.Fatalf("build %s: %v: %s", dir, err, out)
	}
	return bin
}

// measureRR runs the three request/response tests from namespace client to
// dst in namespace server, reports them, and adds them to r ("rr1",
// "rr32", "crr", and their cores as "cores-rr1" ...).
func measureRR(b *testing.B, r rungResult, client, server string, dst netip.Addr, tag string) {
	bin := buildTool(b, "./internal/tcprr")
	// Many short connections: reuse ports in TIME_WAIT after a second, and
	// take them from a wide range (the client namespace is this run's).
	err := lab.InNetns(client, func() error {
		for k, v := range map[string]string{"tcp_tw_reuse": "1", "ip_local_port_range": "10000 65000"} {
			if err := os.WriteFile("/proc/sys/net/ipv4/"+k, []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	tests := []struct {
		key, unit string
		conns     int
		newConn   bool
	}{
		{"rr1", "trans/s-rr1", 1, false},
		{"rr32", "trans/s-rr32", rrConns, false},
		{"crr", "conn/s-crr", rrConns, true},
	}
	for i, t := range tests {
		perfTag := ""
		if tag != "" && *ladderPerf != "" {
			perfTag = tag + "-" + t.key
		}
		res := tcpRR(b, bin, client, server, netip.AddrPortFrom(dst, rrPort+uint16(i)), t.conns, t.newConn, perfTag)
		r[t.key], r["cores-"+t.key] = res.tps, res.cores
		b.ReportMetric(res.tps, t.unit)
		b.ReportMetric(res.cores, "cores-"+t.key)
		reportCostPerRate(b, res.cores, res.tps/1e6, "cores-per-Mtrans-"+t.key)
		markMem(t.key)
	}
}

// tcpRR runs tcprr (bin) in namespace client against a 1-byte echo server
// at dst in namespace server: conns workers, each on a connection of its
// own or, with newConn, on a new connection per transaction, for a
// warm-up and then the TCP measuring time. It returns the transactions
// per second and the machine's busy cores while tcprr measured.
func tcpRR(b *testing.B, bin, client, server string, dst netip.AddrPort, conns int, newConn bool, perfTag string) rrResult {
	stop := echoServer(b, server, dst.Port())
	defer stop()
	args := []string{"-to", dst.String(), "-conns", strconv.Itoa(conns),
		"-warmup", warmup.String(), "-time", ladderTCPTime.String()}
	if newConn {
		args = append(args, "-new")
	}
	cmd := lab.ExecIn(client, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	// Bound the test: tcprr's own timeouts (5 s dials and answers) end it
	// long before this.
	watchdog := time.AfterFunc(warmup+*ladderTCPTime+30*time.Second, func() { cmd.Process.Kill() })
	defer watchdog.Stop()
	lines := bufio.NewReader(out)
	line, err := lines.ReadString('\n')
	cpu0 := machineBusy(b)
	var rec func() (string, error)
	if perfTag != "" && err == nil {
		rec = perfRecorder(b, *ladderPerf, perfTag, *ladderTCPTime-200*time.Millisecond)
	}
	if err != nil || line != "start\n" {
		io.Copy(io.Discard, lines)
		cmd.Wait()
		b.Fatalf("tcprr %v from %s: %q %v: %s", args, client, line, err, stderr.Bytes())
	}
	line, err = lines.ReadString('\n')
	cores := machineBusy(b).cores(cpu0)
	if rec != nil {
		if file, err := rec(); err != nil {
			b.Logf("-ladder.perf %s: %v", perfTag, err)
		} else {
			b.Logf("-ladder.perf: %s recorded in %s", perfTag, file)
		}
	}
	werr := cmd.Wait()
	var n, secs float64
	if err == nil && werr == nil {
		_, err = fmt.Sscan(line, &n, &secs)
	}
	if err != nil || werr != nil || n == 0 || secs <= 0 {
		b.Fatalf("tcprr %v from %s: %q %v %v: %s", args, client, line, err, werr, stderr.Bytes())
	}
	return rrResult{tps: n / secs, cores: cores}
}

// echoServer listens on TCP port in namespace ns and answers every byte
// it reads with itself. stop closes the listener and every connection and
// waits for their goroutines.
func echoServer(b *testing.B, ns string, port uint16) (stop func()) {
	ln, err := lab.ListenIn(ns, "tcp", ":"+strconv.Itoa(int(port)))
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				buf := make([]byte, 64)
				for {
					k, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:k]); err != nil {
						return
					}
				}
			})
		}
	})
	return func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

// reportCostPerRate reports cores per unit of rate (cores busy over rate),
// named unit, when both are known.
func reportCostPerRate(b *testing.B, cores, rate float64, unit string) {
	if cores > 0 && rate > 0 {
		b.ReportMetric(cores/rate, unit)
	}
}
