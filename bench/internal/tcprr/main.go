// Command tcprr is the client of the ladder's request/response tests: it
// counts TCP transactions (a 1-byte request and the 1-byte answer of an
// echo server) from the namespace it runs in (start it with `nsenter
// --net=/run/netns/NS`).
//
//	tcprr -to 10.255.250.2:5203 -conns 1          # ping-pong on one connection
//	tcprr -to 10.255.250.2:5204 -conns 32         # on 32 connections at once
//	tcprr -to 10.255.250.2:5205 -conns 32 -new    # a new connection per transaction
//
// -conns workers each run transactions one after the other: without -new
// on one connection each, dialled first; with -new each transaction
// dials, sends, reads the answer and closes. After -warmup it prints
// "start", then after -time one line "TRANSACTIONS SECONDS": the
// transactions completed in that time and its length. Any error (a dial,
// a read, a write, an answer that is not the request, a new connection's
// transaction taking over 5 s) ends it with exit status 1 and the error
// on stderr.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	to := flag.String("to", "", "echo server address:port")
	conns := flag.Int("conns", 1, "workers, each with one transaction at a time")
	newConn := flag.Bool("new", false, "a new TCP connection per transaction")
	warmup := flag.Duration("warmup", 500*time.Millisecond, "time before the measuring starts")
	measure := flag.Duration("time", 3*time.Second, "measuring time")
	flag.Parse()
	if *to == "" || *conns < 1 {
		fmt.Fprintln(os.Stderr, "tcprr: give -to and -conns ≥ 1")
		os.Exit(2)
	}
	cfg := config{to: *to, conns: *conns, newConn: *newConn, warmup: *warmup, measure: *measure}
	if err := run(os.Stdout, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "tcprr:", err)
		os.Exit(1)
	}
}

// config is what the flags say.
type config struct {
	to              string // echo server address:port
	conns           int    // workers
	newConn         bool   // a new connection per transaction
	warmup, measure time.Duration
}

// run runs the test of cfg and writes "start" and the result line to out.
func run(out io.Writer, cfg config) error {
	to, conns, newConn := cfg.to, cfg.conns, cfg.newConn
	var (
		done     atomic.Int64
		stop     atomic.Bool
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		stop.Store(true)
	}
	// Persistent connections are dialled before the clock starts.
	var persistent []net.Conn
	if !newConn {
		for range conns {
			c, err := net.DialTimeout("tcp", to, 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			persistent = append(persistent, c)
		}
	}
	for i := range conns {
		wg.Go(func() {
			buf := []byte{0}
			for n := byte(1); !stop.Load(); n++ {
				var err error
				if newConn {
					err = transactNew(to, n, buf)
				} else {
					err = transact(persistent[i], n, buf)
				}
				if err != nil {
					if !stop.Load() { // after stop: the deadline set below
						fail(err)
					}
					return
				}
				done.Add(1)
			}
		})
	}
	time.Sleep(cfg.warmup) // warm-up period, not synchronisation
	fmt.Fprintln(out, "start")
	d0, t0 := done.Load(), time.Now()
	time.Sleep(cfg.measure)
	got, el := done.Load()-d0, time.Since(t0)
	stop.Store(true)
	for _, c := range persistent {
		// Unblock workers waiting for an answer; their errors come after stop.
		c.SetDeadline(time.Now())
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	fmt.Fprintf(out, "%d %.6f\n", got, el.Seconds())
	return nil
}

// transactNew dials to, runs one transaction and closes the connection,
// in at most 5 s.
func transactNew(to string, n byte, buf []byte) error {
	c, err := net.DialTimeout("tcp", to, 5*time.Second)
	if err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return errors.Join(transact(c, n, buf), c.Close())
}

// transact sends the byte n on c and reads the echo.
func transact(c net.Conn, n byte, buf []byte) error {
	buf[0] = n
	if _, err := c.Write(buf); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if buf[0] != n {
		return fmt.Errorf("answer %d to request %d", buf[0], n)
	}
	return nil
}
