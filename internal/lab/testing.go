package lab

import (
	"bytes"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
)

// RequireRoot skips t unless the lab can run here: root, /dev/net/tun and
// nsenter. When the environment variable CI is "true" a missing
// requirement fails the test instead, so CI cannot pass by skipping.
func RequireRoot(t testing.TB) {
	t.Helper()
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "needs root (network namespaces, veth, TUN)"
	default:
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			why = "needs /dev/net/tun: " + err.Error()
		} else if _, err := exec.LookPath("nsenter"); err != nil {
			why = "needs nsenter (util-linux): " + err.Error()
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("lab: %s (CI=true, not skipping)", why)
	}
	t.Skipf("lab: %s; run as root, e.g. sudo go test", why)
}

// Setup is New for tests: it applies RequireRoot, defaults Dir to
// t.TempDir() and Logf to t.Logf, fails t if New fails, and registers a
// cleanup that dumps the agent logs if t failed and closes the lab.
func Setup(t testing.TB, cfg Config) *Lab {
	t.Helper()
	RequireRoot(t)
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	var done atomic.Bool // t.Logf panics once the test is over
	if cfg.Logf == nil {
		cfg.Logf = func(format string, args ...any) {
			if !done.Load() {
				t.Logf(format, args...)
			}
		}
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			var buf bytes.Buffer
			l.DumpLogs(&buf)
			if buf.Len() > 0 {
				t.Logf("agent logs:\n%s", buf.String())
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
		done.Store(true)
	})
	return l
}
