package main

import (
	"strings"
	"testing"
)

// A rung's request/response and cost metrics land in their own tables,
// with the ratio to b next to the rate; rungs without them have no row
// there.
func TestFormatTables(t *testing.T) {
	in := `BenchmarkLadder/b-wireguard-go-2  1  5 ns/op  3.00 Gbit/s-tcp1  2.00 cores-tcp1  0.667 cores-per-Gbps-tcp1  10000 trans/s-rr1  200 cores-per-Mtrans-rr1  4000 conn/s-crr
BenchmarkLadder/a-veth-2  1  5 ns/op  30.0 Gbit/s-tcp1  10.0 x-b-tcp1
BenchmarkLadder/n-nebula-2  1  5 ns/op  1.50 Gbit/s-tcp1  0.50 x-b-tcp1  1.333 cores-per-Gbps-tcp1  45.5 cores-per-Mpps-udp64  5000 trans/s-rr1  0.50 x-b-rr1  2500 conn/s-crr  0.625 x-b-crr
`
	rows, order, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	out := format(rows, order)
	for _, want := range []string{
		"| n-nebula | 1.50 (0.50×) |",
		"| b-wireguard-go | 0.667 | – | – | – | 200 | – | – |",
		"| n-nebula | 1.333 | – | 45.5 | – | – | – | – |",
		"| b-wireguard-go | 10000 | – | 4000 |",
		"| n-nebula | 5000 (0.50×) | – | 2500 (0.62×) |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	// a-veth has no request/response or cost metrics: one row only.
	if n := strings.Count(out, "| a-veth |"); n != 1 {
		t.Errorf("a-veth in %d tables, want 1:\n%s", n, out)
	}
}
