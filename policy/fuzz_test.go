package policy

import (
	"testing"

	"github.com/weft-net/weft/policy/pkttest"
)

// FuzzParse feeds arbitrary bytes to the parser, both engine directions
// and Reject: none may panic, and a reject must be a valid packet.
func FuzzParse(f *testing.F) {
	sent := pkttest.UDP(ap(ipB, 1), ap(ipD, 2), nil)
	for _, seed := range [][]byte{
		syn(ap(ipA, 40000), ap(ipB, 8080)),
		pkttest.UDP(ap(ipA6, 1), ap(ipB6, 53), []byte("q")),
		pkttest.ICMPEcho(ipA, ipB, 1, 2, false),
		pkttest.ICMPEcho(ipA6, ipB6, 1, 2, false),
		pkttest.ICMPError(ipD, ipB, 3, 3, sent),
		pkttest.ICMPError(ipA6, ipB6, 2, 0, pkttest.TCP(ap(ipB6, 1), ap(ipA6, 2), pkttest.ACK, 1, 1, nil)),
		pkttest.Fragment4(pkttest.UDP(ap(ipA, 1), ap(ipB, 53), make([]byte, 64)), 32)[1],
		// IPv6 with hop-by-hop and fragment headers before UDP.
		append([]byte{0x60, 0, 0, 0, 0, 32, 0, 64}, append(make([]byte, 32),
			44, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 53, 0, 8, 0, 0)...),
	} {
		f.Add(seed)
	}
	e := newTestEngine(f, Config{MaxFlows: 1024})
	out := make([]byte, 1500)
	f.Fuzz(func(t *testing.T, b []byte) {
		var p packet
		parse(b, &p)
		e.Inbound(b)
		e.Outbound(b)
		if n := e.Reject(b, out); n > 0 {
			if err := pkttest.Valid(out[:n]); err != nil {
				t.Fatalf("reject of %x invalid: %v", b, err)
			}
		}
	})
}
