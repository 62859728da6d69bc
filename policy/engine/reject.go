package engine

import (
	"encoding/binary"
	"github.com/weft-net/weft/policy"
	"sync/atomic"
	"time"
)

// Limits of the packet quoted in an ICMP error: RFC 1812 keeps the whole
// ICMPv4 error within 576 bytes (20 + 8 + 548), RFC 4443 keeps the ICMPv6
// error within the IPv6 minimum MTU of 1280 bytes (40 + 8 + 1232).
const (
	maxQuote4 = 548
	maxQuote6 = 1232
)

const (
	icmp4CodePort       = 3  // port unreachable
	icmp4CodeProhibited = 13 // communication administratively prohibited
	icmp6CodeProhibited = 1  // communication with destination administratively prohibited
	icmp6CodePort       = 4  // port unreachable
	rejectTTL           = 64
)

// Reject builds the answer to a packet denied with DropNoPolicy or
// DropRevoked, so that its sender fails at once instead of timing out:
//
//   - TCP: a RST from the packet's destination to its source (seq = the
//     packet's ack if it had ACK; otherwise seq 0, RST|ACK acknowledging
//     its sequence space);
//   - UDP: ICMP port unreachable (ICMPv6 type 1 code 4) quoting the packet;
//   - ICMP echo request: ICMP administratively prohibited (type 3 code 13,
//     ICMPv6 type 1 code 1).
//
// It writes the complete IP packet into out (give it at least 1500 bytes)
// and returns its length. It returns 0 and writes nothing for a RST, an
// ICMP error or any other packet that must not be answered, when out is
// too small, and when the sender has used up its rate (RejectsPerSecond
// per source IP). pkt and out are borrowed for the duration of the call;
// Reject is safe for concurrent use and does not allocate.
func (e *Engine) Reject(pkt, out []byte) int {
	var p packet
	if !parse(pkt, &p) || p.kind != kindFlow {
		return 0
	}
	ipHdr := 20
	if p.v6 {
		ipHdr = 40
	}
	n := 0
	switch p.proto {
	case policy.ProtoTCP:
		if p.tcpFlags&tcpRST != 0 {
			return 0
		}
		n = ipHdr + 20
	case policy.ProtoUDP:
		n = ipHdr + 8 + quoteLen(&p)
	case policy.ProtoICMP:
		if !p.echoRequest() {
			return 0
		}
		n = ipHdr + 8 + quoteLen(&p)
	}
	if len(out) < n {
		return 0
	}
	if !e.rl.allow(&p.src, e.clk.now()) {
		e.rejectsLimited.Add(1)
		return 0
	}
	out = out[:n]
	if p.proto == policy.ProtoTCP {
		writeRST(&p, out, ipHdr)
	} else {
		writeUnreachable(&p, pkt[:quoteLen(&p)], out, ipHdr)
	}
	e.rejectsSent.Add(1)
	return n
}

func quoteLen(p *packet) int {
	if p.v6 {
		return min(p.ipLen, maxQuote6)
	}
	return min(p.ipLen, maxQuote4)
}

// writeIPHeader writes an IP header from p.dst to p.src (the reverse of
// the denied packet) for a payload of n bytes of protocol proto.
func writeIPHeader(p *packet, out []byte, proto uint8, n int) {
	if p.v6 {
		binary.BigEndian.PutUint32(out[0:], 6<<28)
		binary.BigEndian.PutUint16(out[4:], uint16(n))
		out[6], out[7] = proto, rejectTTL
		copy(out[8:24], p.dst[:])
		copy(out[24:40], p.src[:])
		return
	}
	out[0], out[1] = 0x45, 0
	binary.BigEndian.PutUint16(out[2:], uint16(20+n))
	binary.BigEndian.PutUint32(out[4:], 0x4000) // id 0, DF
	out[8], out[9] = rejectTTL, proto
	out[10], out[11] = 0, 0
	copy(out[12:16], p.dst[12:])
	copy(out[16:20], p.src[12:])
	binary.BigEndian.PutUint16(out[10:], ^fold(sum(0, out[:20])))
}

func writeRST(p *packet, out []byte, ipHdr int) {
	writeIPHeader(p, out, uint8(policy.ProtoTCP), 20)
	tcp := out[ipHdr:]
	binary.BigEndian.PutUint16(tcp[0:], p.dport)
	binary.BigEndian.PutUint16(tcp[2:], p.sport)
	var seq, ack uint32
	flags := uint8(tcpRST)
	if p.tcpFlags&tcpACK != 0 {
		seq = p.ack
	} else {
		ack = p.seq + uint32(p.payloadLen)
		if p.tcpFlags&tcpSYN != 0 {
			ack++
		}
		if p.tcpFlags&tcpFIN != 0 {
			ack++
		}
		flags |= tcpACK
	}
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12], tcp[13] = 5<<4, flags
	clear(tcp[14:20]) // window 0, checksum, urgent pointer
	binary.BigEndian.PutUint16(tcp[16:], ^fold(sum(pseudoHeader(p, uint8(policy.ProtoTCP), 20), tcp)))
}

func writeUnreachable(p *packet, quote, out []byte, ipHdr int) {
	icmp := out[ipHdr:]
	proto := uint8(policy.ProtoICMP)
	if p.v6 {
		proto = protoICMPv6
		icmp[0], icmp[1] = icmp6Unreachable, icmp6CodeProhibited
		if p.proto == policy.ProtoUDP {
			icmp[1] = icmp6CodePort
		}
	} else {
		icmp[0], icmp[1] = icmp4Unreachable, icmp4CodeProhibited
		if p.proto == policy.ProtoUDP {
			icmp[1] = icmp4CodePort
		}
	}
	writeIPHeader(p, out, proto, len(icmp))
	clear(icmp[2:8]) // checksum, unused
	copy(icmp[8:], quote)
	var s uint32
	if p.v6 {
		s = pseudoHeader(p, proto, len(icmp))
	}
	binary.BigEndian.PutUint16(icmp[2:], ^fold(sum(s, icmp)))
}

// pseudoHeader sums the transport checksum pseudo-header of a packet from
// p.dst to p.src (the order does not change the sum).
func pseudoHeader(p *packet, proto uint8, n int) uint32 {
	var s uint32
	if p.v6 {
		s = sum(sum(0, p.src[:]), p.dst[:])
	} else {
		s = sum(sum(0, p.src[12:]), p.dst[12:])
	}
	return s + uint32(proto) + uint32(n)
}

// sum adds b as big-endian 16-bit words to s (Internet checksum).
func sum(s uint32, b []byte) uint32 {
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// rateLimiter is a GCRA token bucket per source IP, in a fixed array of
// buckets indexed by a seeded hash of the address: it never grows, and two
// sources that share a bucket share a rate.
type rateLimiter struct {
	interval int64 // ns per token; 0: unlimited
	burst    int64 // interval * burst
	off      bool
	seed     uint64
	tat      [rlBuckets]atomic.Int64 // theoretical arrival time per bucket
}

const rlBuckets = 4096

func newRateLimiter(perSecond int, seed uint64) *rateLimiter {
	rl := &rateLimiter{seed: seed}
	if perSecond < 0 {
		rl.off = true
		return rl
	}
	rl.interval = int64(time.Second) / int64(perSecond)
	rl.burst = rl.interval * int64(perSecond)
	return rl
}

func (rl *rateLimiter) allow(src *[16]byte, now int64) bool {
	if rl.off {
		return false
	}
	h := mix(rl.seed ^ binary.LittleEndian.Uint64(src[:8]))
	h = mix(h ^ binary.LittleEndian.Uint64(src[8:]))
	return gcraAllow(&rl.tat[h>>32%rlBuckets], now, rl.interval, rl.burst)
}
