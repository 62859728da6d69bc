package engine

import (
	"testing"
	"time"
)

// TestClockStopsAndRestarts: the ticker starts with the first read,
// stops after clockIdle without reads, and a read restarts it.
func TestClockStopsAndRestarts(t *testing.T) {
	c := &clock{epoch: time.Now()}
	waitState := func(want uint32, what string) {
		t.Helper()
		deadline := time.Now().Add(clockIdle + 3*time.Second)
		for c.state.Load() != want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling the ticker, not synchronising
		}
		if s := c.state.Load(); s != want {
			t.Fatalf("%s: state %b, want %b", what, s, want)
		}
	}
	advances := func(what string) {
		t.Helper()
		t0 := c.now()
		deadline := time.Now().Add(3 * time.Second)
		for c.now() == t0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if c.now() == t0 {
			t.Fatalf("%s: the clock does not advance", what)
		}
	}
	if c.now() == 0 {
		t.Fatal("the first read did not take the time")
	}
	if s := c.state.Load(); s&clockRunning == 0 {
		t.Fatalf("state %b after the first read: not running", s)
	}
	advances("started")
	waitState(0, "idle") // no reads: the ticker stops
	t1 := c.nanos.Load()
	time.Sleep(3 * clockTick)
	if n := c.nanos.Load(); n != t1 {
		t.Errorf("stopped clock moved from %d to %d", t1, n)
	}
	if n := c.now(); n <= t1 {
		t.Errorf("a read of the stopped clock gave %d, not after %d", n, t1)
	}
	advances("restarted")
}

// TestManualClock: a manual clock moves only when told to, and starts
// no ticker.
func TestManualClock(t *testing.T) {
	c := newManualClock()
	t0 := c.now()
	time.Sleep(3 * clockTick)
	if n := c.now(); n != t0 {
		t.Errorf("manual clock moved from %d to %d by itself", t0, n)
	}
	c.advance(time.Second)
	if n := c.now(); n != t0+int64(time.Second) {
		t.Errorf("after advance(1s): %d, want %d", n, t0+int64(time.Second))
	}
	if s := c.state.Load(); s != clockRunning|clockRead {
		t.Errorf("manual clock state %b", s)
	}
}
