package overlay

import (
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestChooseBackend(t *testing.T) {
	refused := os.NewSyscallError("ioctl TUNSETOFFLOAD", unix.EINVAL)
	for _, tc := range []struct {
		mode     string
		probe    error
		want     string
		inReason string
	}{
		{TUNAuto, nil, TUNWireGuard, "accepts"},
		{TUNAuto, refused, TUNWater, "refuses TUNSETOFFLOAD"},
		{TUNWireGuard, refused, TUNWireGuard, "configured"},
		{TUNWater, nil, TUNWater, "configured"},
	} {
		got, reason := chooseBackend(tc.mode, tc.probe)
		if got != tc.want || !strings.Contains(reason, tc.inReason) {
			t.Errorf("chooseBackend(%q, %v) = %q, %q; want %q, reason containing %q",
				tc.mode, tc.probe, got, reason, tc.want, tc.inReason)
		}
	}
}

func TestParseTUNBackend(t *testing.T) {
	for in, want := range map[string]string{"": TUNAuto, "auto": TUNAuto, "wireguard": TUNWireGuard, "water": TUNWater} {
		if got, err := ParseTUNBackend(in); err != nil || got != want {
			t.Errorf("ParseTUNBackend(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseTUNBackend("tap"); err == nil {
		t.Error("ParseTUNBackend(tap) succeeded")
	}
}

// TestProbeOffload runs the real probe in a private network namespace (a
// fresh one, on a locked thread that dies with the goroutine): it must either
// succeed or fail with the TUNSETOFFLOAD error, and leave no device behind.
func TestProbeOffload(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	type result struct {
		err, unshareErr error
		left            bool
	}
	done := make(chan result)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		var r result
		if r.unshareErr = unix.Unshare(unix.CLONE_NEWNET); r.unshareErr == nil {
			r.err = probeOffload("wprobe0")
			_, lerr := net.InterfaceByName("wprobe0")
			r.left = lerr == nil
		}
		done <- r
	}()
	r := <-done
	if r.unshareErr != nil {
		t.Skipf("cannot make a network namespace: %v", r.unshareErr)
	}
	if errors.Is(r.err, errNoOffloadProbe) {
		t.Skipf("cannot create a TUN here: %v", r.err)
	}
	if r.err != nil && !strings.Contains(r.err.Error(), "TUNSETOFFLOAD") {
		t.Fatalf("probe error does not name TUNSETOFFLOAD: %v", r.err)
	}
	if r.left {
		t.Error("probe left its device behind")
	}
	t.Logf("offload probe: %v", r.err)
}
