package lab

import (
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// StartCellWith is StartCell with extra agent arguments for this start
// only (after Config.AgentArgs, so they win for repeated flags) and extra
// environment variables "K=V" (run through env(1), which execs the agent:
// the PID is still the agent's). The benchmarks use it to restart one lab's
// agents with other data-path flags.
func (l *Lab) StartCellWith(i int, env []string, extra ...string) error {
	c, err := l.Cell(i)
	if err != nil {
		return err
	}
	if l.cfg.WeftBin == "" {
		return errors.New("lab: starting a cell needs Config.WeftBin")
	}
	if err := c.stop(syscall.SIGTERM, 10*time.Second); err != nil {
		return err
	}
	if err := l.initCell(c); err != nil {
		return err
	}
	bin := l.cfg.WeftBin
	args := []string{"agent",
		"--name", c.Name(),
		"--state-dir", c.StateDir,
		"--bind", c.GossipAddr,
		"--wg-port", fmt.Sprint(WireGuardPort),
		"--interface", c.Interface,
		"--socket", c.Socket,
	}
	for _, j := range l.joinsFor(c) {
		args = append(args, "--join", j)
	}
	args = append(args, l.cfg.AgentArgs...)
	args = append(args, extra...)
	if len(env) > 0 {
		envBin, err := exec.LookPath("env")
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		args = append(append(append([]string{}, env...), bin), args...)
		bin = envBin
	}
	p, err := c.start(bin, args)
	if err != nil {
		return err
	}
	if l.closed.Load() {
		c.stop(syscall.SIGKILL, 10*time.Second)
		return errors.New("lab: closed")
	}
	if len(extra) > 0 || len(env) > 0 {
		l.cfg.Logf("lab: cell %d agent pid %d (%s) extra args %v env %v", i, p.pid, c.LogPath, extra, env)
	} else {
		l.cfg.Logf("lab: cell %d agent pid %d (%s)", i, p.pid, c.LogPath)
	}
	return l.waitSubnet(c, p)
}
