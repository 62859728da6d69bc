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
// a read, a write, an answer that is not the request) ends it with exit
// status 1 and the error on stderr.
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
	if err := run(*to, *conns, *newConn, *warmup, *measure); err != nil {
		fmt.Fprintln(os.Stderr, "tcprr:", err)
		os.Exit(1)
	}
}

func run(to string, conns int, newConn bool, warmup, measure time.Duration) error {
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
	dial := func() (net.Conn, error) { return net.DialTimeout("tcp", to, 5*time.Second) }
	// Persistent connections are dialled before the clock starts.
	var persistent []net.Conn
	if !newConn {
		for range conns {
			c, err := dial()
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
				c := (net.Conn)(nil)
				if newConn {
					var err error
					if c, err = dial(); err != nil {
						fail(err)
						return
					}
				} else {
					c = persistent[i]
				}
				err := transact(c, n, buf)
				if newConn {
					err = errors.Join(err, c.Close())
				}
				if err != nil {
					if !stop.Load() {
						fail(err)
					}
					return
				}
				done.Add(1)
			}
		})
	}
	time.Sleep(warmup) // warm-up period, not synchronisation
	fmt.Println("start")
	d0, t0 := done.Load(), time.Now()
	time.Sleep(measure)
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
	fmt.Printf("%d %.6f\n", got, el.Seconds())
	return nil
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
