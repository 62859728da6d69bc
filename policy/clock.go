package policy

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
	epoch   time.Time
	manual  bool
	nanos   atomic.Int64
	running atomic.Bool
	read    atomic.Bool // set by readers, cleared by the ticker
}

const (
	clockTick = 50 * time.Millisecond
	clockIdle = time.Second
)

// sharedClock serves every Engine in the process: one ticker goroutine at
// most, and none while no packets flow.
var sharedClock = &clock{epoch: time.Now()}

func newManualClock() *clock { return &clock{epoch: time.Now(), manual: true} }

// now returns the time in nanoseconds since c.epoch. It is safe for
// concurrent use and does not allocate (the start of the ticker aside).
func (c *clock) now() int64 {
	if !c.manual {
		if !c.running.Load() {
			c.start()
		} else if !c.read.Load() {
			c.read.Store(true) // a store only once per tick: no cache-line ping-pong
		}
	}
	return c.nanos.Load()
}

func (c *clock) start() {
	c.nanos.Store(int64(time.Since(c.epoch)))
	c.read.Store(true)
	if c.running.CompareAndSwap(false, true) {
		go c.run()
	}
}

func (c *clock) run() {
	t := time.NewTicker(clockTick)
	defer t.Stop()
	idle := time.Duration(0)
	for range t.C {
		c.nanos.Store(int64(time.Since(c.epoch)))
		if c.read.Swap(false) {
			idle = 0
			continue
		}
		if idle += clockTick; idle >= clockIdle {
			c.running.Store(false)
			return
		}
	}
}

// advance moves a manual clock forward.
func (c *clock) advance(d time.Duration) { c.nanos.Add(int64(d)) }

// at converts a wall-clock time into the clock's nanoseconds.
func (c *clock) at(t time.Time) int64 { return int64(t.Sub(c.epoch)) }
