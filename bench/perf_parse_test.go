package bench

import (
	"math"
	"strings"
	"testing"
)

func TestParsePerfReport(t *testing.T) {
	report := `# Samples: 4K of event 'cpu-clock:ppp'
#
# Overhead  Symbol
# ........  ..........
#
    10.25%  [.] golang.org/x/crypto/chacha20poly1305.chacha20Poly1305Seal.abi0
     9.32%  [.] golang.org/x/crypto/chacha20poly1305.chacha20Poly1305Open.abi0
     8.08%  [k] _copy_from_iter
     5.01%  [k] pv_native_safe_halt
     2.00%  [k] pvm_safe_halt_hc
     5.36%  [.] runtime.memmove
     0.45%  [.] golang.org/x/crypto/chacha20poly1305.(*chacha20poly1305).seal
    59.53%  [k] handle_softirqs
`
	s, err := parsePerfReport([]byte(report))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"aead", s.aead, 0.1957},
		{"kernel", s.kernel, 0.6761},
		{"user", s.user, 0.0581},
		{"idle", s.idle, 0.0701},
	} {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("%s = %.4f, want %.4f", c.name, c.got, c.want)
		}
	}

	// A report whose symbols cover too little of the samples, or with a
	// line that is not a percentage, is an error, not a share.
	if _, err := parsePerfReport([]byte("    10.25%  [.] runtime.memmove\n")); err == nil || !strings.Contains(err.Error(), "add up to 10%") {
		t.Errorf("partial report: err = %v", err)
	}
	if _, err := parsePerfReport([]byte("    x.5%  [.] runtime.memmove\n")); err == nil {
		t.Error("bad percentage: no error")
	}
}
