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
	big := newTestEngine(f, Config{}) // shards with nurseries
	out := make([]byte, 1500)
	empty := NewEngine(Config{MaxFlows: 1024}) // tracks nothing: fast4 can only decline or miss
	f.Fuzz(func(t *testing.T, b []byte) {
		var p packet
		ok := parse(b, &p)
		checkFast4(t, empty, b, ok, &p)
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

// checkFast4 checks that the IPv4 fast path looks up exactly the packets
// the generic path would look up (parse ok, an IPv4 flow packet that is
// not a first fragment), under the same key: any other packet must be
// declined so that the generic path judges it.
func checkFast4(t *testing.T, e *Engine, b []byte, ok bool, p *packet) {
	t.Helper()
	s := e.snap.Load()
	for _, out := range []bool{false, true} {
		_, hint := e.fast4(b, s, e.clk.now(), out, false)
		want := ok && p.kind == kindFlow && !p.v6 && !p.firstFrag
		if got := hint != fastUntried; got != want {
			t.Fatalf("fast4(%x, out=%v) looked up %v, generic path would %v (parse ok=%v kind=%v)", b, out, got, want, ok, p.kind)
		}
		if hint == fastHit {
			t.Fatalf("fast4(%x) hit in an empty table", b)
		}
	}
}

// TestFast4MatchesParse runs checkFast4 over well-formed packets of every
// kind and over every prefix and single-byte corruption of them.
func TestFast4MatchesParse(t *testing.T) {
	e := NewEngine(Config{MaxFlows: 1024})
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
			ok := parse(pkt[:n], &p)
			checkFast4(t, e, pkt[:n], ok, &p)
		}
		for i := range pkt {
			for _, x := range []byte{0x01, 0x10, 0x40, 0xff} {
				c := append([]byte(nil), pkt...)
				c[i] ^= x
				var p packet
				ok := parse(c, &p)
				checkFast4(t, e, c, ok, &p)
			}
		}
	}
}

// TestFast4MatchesFast checks that the IPv4 fast path accepts exactly the
// packets the generic lock-free lookup accepts, with the same verdict, over
// flows of every protocol and direction (hairpin included), flows whose
// side is no longer local, revoked flows, closing flows and expired flows.
func TestFast4MatchesFast(t *testing.T) {
	// MaxFlows 1024 leaves shards too small for a nursery; the default
	// gives every shard one.
	for _, maxFlows := range []int{1024, 0} {
		t.Run(fmt.Sprintf("MaxFlows=%d", maxFlows), func(t *testing.T) { testFast4MatchesFast(t, maxFlows) })
	}
}

func testFast4MatchesFast(t *testing.T, maxFlows int) {
	e := newTestEngine(t, Config{MaxFlows: maxFlows})
	a, b, c, d := ap(ipA, 40000), ap(ipB, 8080), ap(ipC, 5000), ap(ipD, 8080)
	var pkts [][]byte
	for _, pr := range [][2]netip.AddrPort{{a, b}, {b, d}, {c, ap(ipB, 9000)}, {a, ap(ipB, 53)}} {
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
		for _, pkt := range pkts {
			for _, o := range []bool{false, true} {
				v, hint := e.fast4(pkt, s, now, o, false)
				var p packet
				parse(pkt, &p)
				var k ctKey
				srcIsA := e.ct.setKey(&k, &p.src, &p.dst, p.sport, p.dport, p.proto, p.v6)
				hairpin := s.t.inSubnet(&p.dst, false)
				var fr int
				if o {
					fr = e.fast(p.proto, p.tcpFlags, &k, srcIsA, s, now, true, hairpin)
				} else {
					fr = e.fast(p.proto, p.tcpFlags, &k, srcIsA, s, now, false, true)
				}
				want := Accept
				if o && hairpin {
					want = AcceptLocal
				}
				if (hint == fastHit) != (fr == fastHit) || hint == fastHit && v != want || (hint == fastAbsent) != (fr == fastAbsent) {
					t.Errorf("%s: %x out=%v: fast4 %v/%d, fast %d", stage, pkt, o, v, hint, fr)
				}
			}
		}
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
