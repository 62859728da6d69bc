package engine

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/policy/engine/pkttest"
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
	big := newTestEngine(f, Config{}) // big shards
	out := make([]byte, 1500)
	f.Fuzz(func(t *testing.T, b []byte) {
		var p packet
		checkMalformed(t, e, b, parse(b, &p))
		e.Inbound(b)
		e.Outbound(b)
		big.Inbound(b)
		big.Outbound(b)
		if n := e.Reject(b, out); n > 0 {
			if err := pkttest.Valid(out[:n]); err != nil {
				t.Fatalf("reject of %x invalid: %v", b, err)
			}
		}
	})
}

// checkMalformed checks that e answers DropMalformed in both directions
// exactly when the parser refused b (ok false).
func checkMalformed(t *testing.T, e *Engine, b []byte, ok bool) {
	t.Helper()
	if in, out := e.Inbound(b), e.Outbound(b); (in == DropMalformed) == ok || (out == DropMalformed) == ok {
		t.Fatalf("%x: parse ok %v, verdicts %v in, %v out", b, ok, in, out)
	}
}

// TestCorruptedPackets runs checkMalformed over well-formed packets of
// every kind and over every prefix and single-byte corruption of them.
func TestCorruptedPackets(t *testing.T) {
	e := newTestEngine(t, Config{MaxFlows: 1024})
	sent := pkttest.UDP(ap(ipB, 1), ap(ipD, 2), nil)
	frag := pkttest.Fragment4(pkttest.UDP(ap(ipA, 1), ap(ipB, 53), make([]byte, 64)), 32)
	for _, pkt := range [][]byte{
		syn(ap(ipA, 40000), ap(ipB, 8080)),
		ack(ap(ipB, 8080), ap(ipA, 40000)),
		pkttest.UDP(ap(ipA, 1), ap(ipB, 53), []byte("q")),
		pkttest.ICMPEcho(ipA, ipB, 1, 2, false),
		pkttest.ICMPEcho(ipB, ipA, 1, 2, true),
		pkttest.ICMPError(ipD, ipB, 3, 3, sent),
		pkttest.IP(ipA, ipB, 47, make([]byte, 8)),
		frag[0], frag[1],
		ack(ap(ipA6, 1), ap(ipB6, 8080)),
	} {
		for n := range len(pkt) + 1 {
			var p packet
			checkMalformed(t, e, pkt[:n], parse(pkt[:n], &p))
		}
		for i := range pkt {
			for _, x := range []byte{0x01, 0x10, 0x40, 0xff} {
				c := append([]byte(nil), pkt...)
				c[i] ^= x
				var p packet
				checkMalformed(t, e, c, parse(c, &p))
			}
		}
	}
}

// TestFastMatchesLocked checks that the lock-free lookup accepts a packet
// only when the locked lookup would accept it too, and finds a flow absent
// only when the locked lookup does, over flows of every protocol and
// direction (hairpin included), flows whose side is no longer local,
// revoked flows, closing flows and expired flows, in small and big shards.
func TestFastMatchesLocked(t *testing.T) {
	for _, maxFlows := range []int{1024, 0} {
		t.Run(fmt.Sprintf("MaxFlows=%d", maxFlows), func(t *testing.T) { testFastMatchesLocked(t, maxFlows) })
	}
}

func testFastMatchesLocked(t *testing.T, maxFlows int) {
	e := newTestEngine(t, Config{MaxFlows: maxFlows})
	a, b, c, d := ap(ipA, 40000), ap(ipB, 8080), ap(ipC, 5000), ap(ipD, 8080)
	var pkts [][]byte
	for _, pr := range [][2]netip.AddrPort{{a, b}, {b, d}, {c, ap(ipB, 9000)}, {a, ap(ipB, 53)}, {ap(ipA6, 1), ap(ipB6, 8080)}} {
		x, y := pr[0], pr[1]
		for _, fl := range []uint8{pkttest.SYN, pkttest.ACK, pkttest.SYN | pkttest.ACK, pkttest.FIN | pkttest.ACK, pkttest.RST} {
			pkts = append(pkts, pkttest.TCP(x, y, fl, 1, 1, nil), pkttest.TCP(y, x, fl, 1, 1, nil))
		}
		pkts = append(pkts, pkttest.UDP(x, y, nil), pkttest.UDP(y, x, nil))
	}
	pkts = append(pkts, pkttest.ICMPEcho(ipA, ipB, 7, 1, false), pkttest.ICMPEcho(ipB, ipA, 7, 1, true),
		pkttest.ICMPEcho(ipB, ipD, 8, 1, false), pkttest.ICMPEcho(ipD, ipB, 8, 1, true))
	compare := func(stage string) {
		t.Helper()
		s, now := e.snap.Load(), e.clk.now()
		hits := 0
		for _, pkt := range pkts {
			for _, o := range []bool{false, true} {
				var p packet
				parse(pkt, &p)
				var k ctKey
				srcIsA := e.ct.setKey(&k, &p.src, &p.dst, p.sport, p.dport, p.proto, p.v6)
				var miss ctMiss
				fr := e.fast(&p, &k, srcIsA, s, now, o, !o || s.t.inSubnet(&p.dst, p.v6), &miss)
				sh := e.ct.shard(&k)
				sh.lock()
				base, ent, found := e.ct.lookupLocked(sh, &k, now)
				var v Verdict
				if found {
					v, found = e.settleLocked(sh, &k, base, &ent, s, now)
				}
				sh.unlock()
				if fr == fastHit {
					hits++
				}
				if fr == fastHit && (!found || v != Accept) || fr == fastAbsent && found {
					t.Errorf("%s: %x out=%v: lock-free %d, locked found %v %v", stage, pkt, o, fr, found, v)
				}
			}
		}
		t.Logf("%s: %d lock-free hits", stage, hits)
	}
	compare("empty")
	for _, pkt := range pkts {
		e.Inbound(pkt)
		e.Outbound(pkt)
	}
	compare("open")
	e.clk.advance(clockTick)
	compare("later")
	e.SetTable(testTable(without(testRules, 0)))
	for _, pkt := range pkts[:4] {
		e.Inbound(pkt) // revalidate some: tombstones
	}
	compare("revoked")
	e.SetTable(Compile(TableConfig{Rules: testRules, Endpoints: testEndpoints[:2], LocalSubnet: localSubnet}))
	for _, pkt := range pkts {
		e.Outbound(pkt)
	}
	compare("appC gone")
	e.clk.advance(2 * time.Hour)
	compare("expired")
}
