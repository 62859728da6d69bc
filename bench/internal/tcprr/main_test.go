package main

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// echo serves a 1-byte echo on loopback; with wrong it answers every
// request with another byte.
func echo(t *testing.T, wrong bool) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1)
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if wrong {
						buf[0]++
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestRun(t *testing.T) {
	for _, newConn := range []bool{false, true} {
		var out strings.Builder
		cfg := config{to: echo(t, false), conns: 4, newConn: newConn, warmup: 50 * time.Millisecond, measure: 200 * time.Millisecond}
		if err := run(&out, cfg); err != nil {
			t.Fatalf("new %v: %v", newConn, err)
		}
		var n int
		var secs float64
		if _, err := fmt.Sscanf(out.String(), "start\n%d %f\n", &n, &secs); err != nil || n == 0 || secs < 0.2 {
			t.Errorf("new %v: output %q (%v)", newConn, out.String(), err)
		}
	}
}

func TestRunWrongAnswer(t *testing.T) {
	cfg := config{to: echo(t, true), conns: 1, warmup: 50 * time.Millisecond, measure: 50 * time.Millisecond}
	if err := run(io.Discard, cfg); err == nil || !strings.Contains(err.Error(), "answer") {
		t.Errorf("run against a wrong echo: %v, want an error about the answer", err)
	}
}
