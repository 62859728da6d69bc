package engine

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/policy/engine/pkttest"
)

// rejectOf runs Reject and checks the output with pkttest.Valid.
func rejectOf(t *testing.T, e *Engine, pkt []byte) []byte {
	t.Helper()
	out := make([]byte, 1500)
	n := e.Reject(pkt, out)
	if n == 0 {
		t.Fatal("Reject returned 0")
	}
	if err := pkttest.Valid(out[:n]); err != nil {
		t.Fatalf("reject packet invalid: %v", err)
	}
	return out[:n]
}

func TestRejectTCP(t *testing.T) {
	a, b := ap(ipA, 40000), ap(ipB, 8081)
	for _, tt := range []struct {
		name       string
		pkt        []byte
		seq, ack   uint32
		flags      uint8
		src, dst   netip.AddrPort
		hdr, proto int
	}{
		{"syn", pkttest.TCP(a, b, pkttest.SYN, 1000, 0, nil), 0, 1001, pkttest.RST | pkttest.ACK, b, a, 20, 6},
		{"syn with data", pkttest.TCP(a, b, pkttest.SYN, 1000, 0, []byte("abc")), 0, 1004, pkttest.RST | pkttest.ACK, b, a, 20, 6},
		{"fin no ack", pkttest.TCP(a, b, pkttest.FIN, 1000, 0, []byte("ab")), 0, 1003, pkttest.RST | pkttest.ACK, b, a, 20, 6},
		{"ack", pkttest.TCP(a, b, pkttest.ACK|pkttest.PSH, 1000, 777, []byte("data")), 777, 0, pkttest.RST, b, a, 20, 6},
		{"v6 syn", pkttest.TCP(ap(ipA6, 40000), ap(ipB6, 8081), pkttest.SYN, 0xffffffff, 0, nil), 0, 0,
			pkttest.RST | pkttest.ACK, ap(ipB6, 8081), ap(ipA6, 40000), 40, 6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEngine(t, Config{})
			r := rejectOf(t, e, tt.pkt)
			if len(r) != tt.hdr+20 {
				t.Fatalf("length %d", len(r))
			}
			var src, dst netip.Addr
			if tt.hdr == 20 {
				src, dst = netip.AddrFrom4([4]byte(r[12:16])), netip.AddrFrom4([4]byte(r[16:20]))
				if r[8] != 64 || r[9] != 6 || binary.BigEndian.Uint16(r[6:])&0x4000 == 0 {
					t.Errorf("ttl %d proto %d flags %#x", r[8], r[9], r[6])
				}
			} else {
				src, dst = netip.AddrFrom16([16]byte(r[8:24])), netip.AddrFrom16([16]byte(r[24:40]))
				if r[7] != 64 || r[6] != 6 {
					t.Errorf("hop limit %d next header %d", r[7], r[6])
				}
			}
			tcp := r[tt.hdr:]
			gotSrc := netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:]))
			gotDst := netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:]))
			if gotSrc != tt.src || gotDst != tt.dst {
				t.Errorf("%v -> %v, want %v -> %v", gotSrc, gotDst, tt.src, tt.dst)
			}
			if seq, ack := binary.BigEndian.Uint32(tcp[4:]), binary.BigEndian.Uint32(tcp[8:]); seq != tt.seq || ack != tt.ack {
				t.Errorf("seq %d ack %d, want %d %d", seq, ack, tt.seq, tt.ack)
			}
			if tcp[13] != tt.flags || binary.BigEndian.Uint16(tcp[14:]) != 0 {
				t.Errorf("flags %#x window %d", tcp[13], binary.BigEndian.Uint16(tcp[14:]))
			}
		})
	}
}

func TestRejectUnreachable(t *testing.T) {
	for _, tt := range []struct {
		name      string
		pkt       []byte
		hdr       int
		typ, code uint8
		quote     int
	}{
		{"udp", pkttest.UDP(ap(ipA, 1), ap(ipB, 54), []byte("hello")), 20, 3, 3, 33},
		{"udp big", pkttest.UDP(ap(ipA, 1), ap(ipB, 54), make([]byte, 1000)), 20, 3, 3, 548},
		{"echo", pkttest.ICMPEcho(ipD, ipB, 5, 1, false), 20, 3, 13, 36},
		{"udp v6", pkttest.UDP(ap(ipA6, 1), ap(ipB6, 54), []byte("hello")), 40, 1, 4, 53},
		{"udp v6 big", pkttest.UDP(ap(ipA6, 1), ap(ipB6, 54), make([]byte, 1400)), 40, 1, 4, 1232},
		{"echo v6", pkttest.ICMPEcho(ipA6, ipB6, 5, 1, false), 40, 1, 1, 56},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEngine(t, Config{})
			r := rejectOf(t, e, tt.pkt)
			if len(r) != tt.hdr+8+tt.quote {
				t.Fatalf("length %d, want %d", len(r), tt.hdr+8+tt.quote)
			}
			icmp := r[tt.hdr:]
			if icmp[0] != tt.typ || icmp[1] != tt.code {
				t.Errorf("type %d code %d, want %d %d", icmp[0], icmp[1], tt.typ, tt.code)
			}
			if !bytes.Equal(icmp[8:], tt.pkt[:tt.quote]) {
				t.Error("quote differs from the packet")
			}
			// From the denied packet's destination to its source.
			if tt.hdr == 20 && (!bytes.Equal(r[12:16], tt.pkt[16:20]) || !bytes.Equal(r[16:20], tt.pkt[12:16])) ||
				tt.hdr == 40 && (!bytes.Equal(r[8:24], tt.pkt[24:40]) || !bytes.Equal(r[24:40], tt.pkt[8:24])) {
				t.Error("addresses not swapped")
			}
			// The reject is itself an ICMP error the sender's cell can
			// match against its conntrack: the engine parses it as one.
			var p packet
			if !parse(r, &p) || p.kind != kindICMPError {
				t.Errorf("reject parses as kind %d", p.kind)
			}
		})
	}
}

func TestNoReject(t *testing.T) {
	e := newTestEngine(t, Config{})
	sent := pkttest.UDP(ap(ipB, 1), ap(ipD, 2), nil)
	for name, pkt := range map[string][]byte{
		"rst":        pkttest.TCP(ap(ipA, 1), ap(ipB, 2), pkttest.RST, 1, 0, nil),
		"rst ack":    pkttest.TCP(ap(ipA, 1), ap(ipB, 2), pkttest.RST|pkttest.ACK, 1, 1, nil),
		"icmp error": pkttest.ICMPError(ipD, ipB, 3, 3, sent),
		"echo reply": pkttest.ICMPEcho(ipA, ipB, 1, 1, true),
		"malformed":  sent[:10],
		"gre":        pkttest.IP(ipA, ipB, 47, make([]byte, 8)),
		"fragment":   pkttest.Fragment4(pkttest.UDP(ap(ipA, 1), ap(ipB, 2), make([]byte, 64)), 32)[1],
	} {
		if n := e.Reject(pkt, make([]byte, 1500)); n != 0 {
			t.Errorf("%s: Reject = %d, want 0", name, n)
		}
	}
	if n := e.Reject(syn(ap(ipA, 1), ap(ipB, 2)), make([]byte, 39)); n != 0 {
		t.Errorf("short out: Reject = %d, want 0", n)
	}
	if c := e.Counters(); c.RejectsSent != 0 || c.RejectsLimited != 0 {
		t.Errorf("counters %+v", c)
	}
}

func TestRejectRateLimit(t *testing.T) {
	e := newTestEngine(t, Config{RejectsPerSecond: 5})
	out := make([]byte, 1500)
	send := func(src netip.Addr, n int) (sent int) {
		for range n {
			if e.Reject(syn(ap(src, 1), ap(ipB, 2)), out) > 0 {
				sent++
			}
		}
		return sent
	}
	if got := send(ipA, 20); got != 5 {
		t.Errorf("burst: %d rejects, want 5", got)
	}
	if got := send(ipD, 20); got != 5 {
		t.Errorf("another source: %d rejects, want 5 (buckets are per source)", got)
	}
	e.clk.advance(time.Second / 5)
	if got := send(ipA, 20); got != 1 {
		t.Errorf("after 200ms: %d rejects, want 1", got)
	}
	e.clk.advance(10 * time.Second)
	if got := send(ipA, 20); got != 5 {
		t.Errorf("after a pause: %d rejects, want 5", got)
	}
	if c := e.Counters(); c.RejectsSent != 16 || c.RejectsLimited != 64 {
		t.Errorf("sent %d limited %d, want 16 64", c.RejectsSent, c.RejectsLimited)
	}
	off := newTestEngine(t, Config{RejectsPerSecond: -1})
	if off.Reject(syn(ap(ipA, 1), ap(ipB, 2)), out) != 0 {
		t.Error("negative RejectsPerSecond still rejects")
	}
}
