package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// cliTimeout bounds one CLI command (Weft and friends).
const cliTimeout = 30 * time.Second

// initCell runs `weft init` for c unless its state dir is initialised.
// Cells other than cell 1 get cell 1's cluster key.
func (l *Lab) initCell(c *Cell) error {
	if _, err := os.Stat(filepath.Join(c.StateDir, "wireguard.key")); err == nil {
		return nil
	}
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	args := []string{"init", "--state-dir", c.StateDir}
	if first := l.cells()[0]; c != first {
		args = append(args, "--cluster-key", filepath.Join(first.StateDir, "cluster.key"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, l.cfg.WeftBin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lab: weft %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// joinsFor returns the --join addresses for starting c: cell 1 if it runs
// (it is the seed), otherwise every other running cell; while the
// underlay is split (Partition), only cells on c's side. Cell 1's first
// start joins nobody.
func (l *Lab) joinsFor(c *Cell) []string {
	cells := l.cells()
	if c.Index != 1 && cells[0].PID() != 0 && l.sameSide(c, cells[0]) {
		return []string{cells[0].GossipAddr}
	}
	var joins []string
	for _, o := range cells {
		if o != c && o.PID() != 0 && l.sameSide(c, o) {
			joins = append(joins, o.GossipAddr)
		}
	}
	return joins
}

// StartCell starts the agent of cell i (stopping it first if it runs),
// with the same state dir, and waits until it has leased its subnet.
func (l *Lab) StartCell(i int) error { return l.StartCellWith(i, nil) }

// start runs `nsenter --net=... -- weft args...` with output appended to
// the cell's log. nsenter execs, so the child is the agent itself.
func (c *Cell) start(weftBin string, args []string) (*agentProc, error) {
	logf, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := ExecIn(c.Netns, weftBin, args...)
	fmt.Fprintf(logf, "=== %s lab: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // a terminal's ^C reaches the lab, which stops the agents in order
		Pdeathsig: syscall.SIGKILL, // no orphaned agents if the lab process dies
	}
	p := &agentProc{exited: make(chan struct{})}
	startc := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the forking *thread* exits: keep this
		// thread to ourselves until the agent has been reaped.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			startc <- err
			return
		}
		p.pid, p.process = cmd.Process.Pid, cmd.Process
		startc <- nil
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := <-startc; err != nil {
		return nil, fmt.Errorf("lab: start cell %d agent: %w", c.Index, err)
	}
	c.mu.Lock()
	c.proc = p
	c.mu.Unlock()
	return p, nil
}

// waitSubnet polls the agent's status until it reports a subnet, the agent
// exits, or the deadline passes.
func (l *Lab) waitSubnet(c *Cell, p *agentProc) error {
	deadline := time.Now().Add(l.cfg.SubnetTimeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		st, err := l.status(c, 2*time.Second)
		if err == nil && st.Subnet != "" {
			l.cfg.Logf("lab: cell %d has subnet %s", c.Index, st.Subnet)
			return nil
		}
		if err != nil {
			lastErr = err
		} else {
			lastErr = errors.New("no subnet yet")
		}
		select {
		case <-p.exited:
			return fmt.Errorf("lab: cell %d agent exited (%v) before leasing a subnet; log tail:\n%s",
				c.Index, p.err, strings.Join(tailLines(c.LogPath, 20), "\n"))
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: cell %d has no subnet after %v (last: %v); log tail:\n%s",
				c.Index, l.cfg.SubnetTimeout, lastErr, strings.Join(tailLines(c.LogPath, 20), "\n"))
		}
	}
}

// StopCell sends SIGTERM to the agent of cell i and waits for it to exit
// (SIGKILL and an error after 10 s).
func (l *Lab) StopCell(i int) error { return l.signalCell(i, syscall.SIGTERM) }

// KillCell sends SIGKILL to the agent of cell i and waits for it to exit.
func (l *Lab) KillCell(i int) error { return l.signalCell(i, syscall.SIGKILL) }

func (l *Lab) signalCell(i int, sig syscall.Signal) error {
	c, err := l.Cell(i)
	if err != nil {
		return err
	}
	if c.PID() == 0 {
		return fmt.Errorf("lab: cell %d agent is not running", i)
	}
	return c.stop(sig, 10*time.Second)
}

// stop signals the running agent, if any, and waits for it; after grace
// it sends SIGKILL and reports the timeout.
func (c *Cell) stop(sig syscall.Signal, grace time.Duration) error {
	c.mu.Lock()
	p := c.proc
	c.proc = nil
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	// os.Process signals by PID and refuses once the child is reaped, so
	// a recycled PID is never hit.
	if err := p.process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("lab: signal cell %d agent (pid %d): %w", c.Index, p.pid, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(grace):
	}
	p.process.Signal(syscall.SIGKILL)
	<-p.exited
	return fmt.Errorf("lab: cell %d agent (pid %d) ignored %v for %v, killed", c.Index, p.pid, sig, grace)
}

// Name returns the cell's agent name (--name): "c<i>", or the name given
// to AddCellWith.
func (c *Cell) Name() string { return c.name }

// Weft runs the weft CLI with --socket of cell i, inside the cell's
// namespace, and returns its combined output. The error includes it.
func (l *Lab) Weft(i int, args ...string) (string, error) {
	c, err := l.Cell(i)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	err = l.runWeft(c, cliTimeout, &out, &out, args...)
	if err != nil {
		return out.String(), fmt.Errorf("lab: cell %d: weft %s: %v: %s", i, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.String(), nil
}

// OperatorKey is the operator key every lab CLI call signs with: the
// process's WEFT_OPERATOR_KEY if set, else cell 1's operator.key (cells
// 2..N are initialised with cell 1's cluster key, so they trust it).
func (l *Lab) OperatorKey() string {
	if k := os.Getenv("WEFT_OPERATOR_KEY"); k != "" {
		return k
	}
	return filepath.Join(l.cells()[0].StateDir, "operator.key")
}

// runWeft runs `weft --socket S args...` in c's namespace, signing
// changes with OperatorKey.
func (l *Lab) runWeft(c *Cell, timeout time.Duration, stdout, stderr io.Writer, args ...string) error {
	if l.cfg.WeftBin == "" {
		return errors.New("lab: no Config.WeftBin")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	argv := append([]string{"--socket", c.Socket}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", nsenterArgs(c.Netns, l.cfg.WeftBin, argv)...)
	cmd.Env = append(os.Environ(), "WEFT_OPERATOR_KEY="+l.OperatorKey())
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = time.Second
	return cmd.Run()
}

// Status returns the parsed `weft status --output json` of cell i.
func (l *Lab) Status(i int) (Status, error) {
	c, err := l.Cell(i)
	if err != nil {
		return Status{}, err
	}
	return l.status(c, cliTimeout)
}

func (l *Lab) status(c *Cell, timeout time.Duration) (Status, error) {
	var stdout, stderr bytes.Buffer
	if err := l.runWeft(c, timeout, &stdout, &stderr, "status", "--output", "json"); err != nil {
		return Status{}, fmt.Errorf("lab: cell %d: weft status: %v: %s", c.Index, err, bytes.TrimSpace(stderr.Bytes()))
	}
	st, err := ParseStatus(stdout.Bytes())
	if err != nil {
		return Status{}, fmt.Errorf("lab: cell %d: %w", c.Index, err)
	}
	return st, nil
}

// CreateContainer asks the agent of cell i for a container of app named
// name (use l.Name) and returns its overlay IP.
func (l *Lab) CreateContainer(i int, app, name string) (netip.Addr, error) {
	c, err := l.Cell(i)
	if err != nil {
		return netip.Addr{}, err
	}
	var stdout, stderr bytes.Buffer
	args := []string{"container", "create", "--app", app, "--name", name}
	if err := l.runWeft(c, cliTimeout, &stdout, &stderr, args...); err != nil {
		return netip.Addr{}, fmt.Errorf("lab: cell %d: weft %s: %v: %s %s", i, strings.Join(args, " "), err,
			bytes.TrimSpace(stdout.Bytes()), bytes.TrimSpace(stderr.Bytes()))
	}
	return parseIPLine(stdout.String())
}

// parseIPLine parses the last non-empty line of out as an address (a
// prefix such as 10.255.1.2/32 is accepted too).
func parseIPLine(out string) (netip.Addr, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if a, err := netip.ParseAddr(last); err == nil {
		return a, nil
	}
	if p, err := netip.ParsePrefix(last); err == nil {
		return p.Addr(), nil
	}
	return netip.Addr{}, fmt.Errorf("lab: container create printed %q, want an IP address", out)
}

// DeleteContainer deletes container name on cell i.
func (l *Lab) DeleteContainer(i int, name string) error {
	_, err := l.Weft(i, "container", "delete", name)
	return err
}
