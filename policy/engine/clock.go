package engine

import (
	"sync/atomic"
	"time"
)

// clock is a coarse monotonic clock for the packet path: nanoseconds since
// epoch, refreshed every clockTick by a goroutine, so that a verdict costs
// an atomic load instead of a time.Now call. The goroutine is started by the
// first read and exits after clockIdle without reads; a read that finds it
// stopped takes the time itself and restarts it. Idle timeouts and rate
// limits are therefore accurate to about one tick.
//
// A manual clock (tests) only moves when told to.
type clock struct {
	epoch time.Time
	nanos atomic.Int64
	// state is clockRunning while the ticker runs, plus clockRead once a
	// reader has read since the ticker's last tick. A reader that finds
	// both (the common case: one load) does nothing else; a manual clock
	// has both from the start and never changes it.
	state atomic.Uint32
}

const (
	clockRunning = 1 << iota
	clockRead

	clockTick = 50 * time.Millisecond
	clockIdle = time.Second
)

// sharedClock serves every Engine in the process: one ticker goroutine at
// most, and none while no packets flow.
var sharedClock = &clock{epoch: time.Now()}

func newManualClock() *clock {
	c := &clock{epoch: time.Now()}
	c.state.Store(clockRunning | clockRead)
	return c
}

// now returns the time in nanoseconds since c.epoch. It is safe for
// concurrent use and does not allocate (the start of the ticker aside).
func (c *clock) now() int64 {
	if c.state.Load() != clockRunning|clockRead {
		c.mark()
	}
	return c.nanos.Load()
}

// mark records a read: it sets clockRead (a store only once per tick: no
// cache-line ping-pong), and starts the ticker, after taking the time
// itself, if it is not running.
func (c *clock) mark() {
	for {
		s := c.state.Load()
		switch {
		case s&clockRunning == 0:
			c.nanos.Store(int64(time.Since(c.epoch)))
			if c.state.CompareAndSwap(s, clockRunning|clockRead) {
				go c.run()
				return
			}
		case s&clockRead == 0:
			if c.state.CompareAndSwap(s, s|clockRead) {
				return
			}
		default:
			return
		}
	}
}

// run is the ticker: it refreshes nanos every clockTick and stops after
// clockIdle without reads. A read that comes as it stops (its CAS fails)
// keeps it running.
func (c *clock) run() {
	t := time.NewTicker(clockTick)
	defer t.Stop()
	idle := time.Duration(0)
	for range t.C {
		c.nanos.Store(int64(time.Since(c.epoch)))
		if c.state.And(^uint32(clockRead))&clockRead != 0 {
			idle = 0
			continue
		}
		if idle += clockTick; idle >= clockIdle && c.state.CompareAndSwap(clockRunning, 0) {
			return
		}
	}
}

// advance moves a manual clock forward.
func (c *clock) advance(d time.Duration) { c.nanos.Add(int64(d)) }

// at converts a wall-clock time into the clock's nanoseconds.
func (c *clock) at(t time.Time) int64 { return int64(t.Sub(c.epoch)) }
