package engine

import (
	"encoding/binary"
	"github.com/weft-net/weft/policy"
)

// pktKind classifies a parsed packet for the verdict logic.
type pktKind uint8

// protoICMPv6 is the IPv6 next-header value of ICMPv6. The parser maps it to
// ProtoICMP so that one icmp rule covers both families.
const protoICMPv6 = 58

const (
	kindFlow        pktKind = iota // tcp, udp or icmp echo: has a trackable tuple
	kindICMPError                  // icmp error quoting a packet; inner* fields are set
	kindICMPOther                  // icmp of a type that is neither echo nor error
	kindFragment                   // non-first fragment: no transport header
	kindUnsupported                // a transport protocol rules cannot name
	kindNotIP                      // neither IPv4 nor IPv6
)

// packet is one parsed IP packet. It is filled in place by parse and lives
// on the caller's stack; it holds no pointers into the packet buffer.
type packet struct {
	src, dst [16]byte // IPv4 as v4-mapped
	v6       bool
	kind     pktKind
	proto    policy.Protocol // ICMPv6 is reported as ProtoICMP
	// transport, for kindFlow (and the first fragment of a fragmented packet)
	sport, dport uint16 // ICMP echo: the identifier, as both ports
	tcpFlags     uint8
	icmpType     uint8
	seq, ack     uint32
	payloadLen   int // bytes after the TCP header
	// layout
	ipLen int // total length of the IP packet (may be less than the buffer)
	ipHdr int // bytes of IP header(s) before the transport header
	// fragmentation
	fragID    uint32 // IPv4 identification or IPv6 fragment identification
	firstFrag bool   // offset zero and more fragments follow
	// kindICMPError: the quoted packet's tuple, as the quoted packet was sent.
	// innerProto is zero when the quoted packet has no trackable tuple.
	innerSrc, innerDst     [16]byte
	innerSport, innerDport uint16
	innerProto             policy.Protocol
}

// TCP flag bits.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

const (
	icmp4EchoReply   = 0
	icmp4Unreachable = 3
	icmp4EchoRequest = 8
	icmp6Unreachable = 1
	icmp6EchoRequest = 128
	icmp6EchoReply   = 129
)

// echoRequest reports whether p is an ICMP(v6) echo request.
func (p *packet) echoRequest() bool {
	return p.kind == kindFlow && p.proto == policy.ProtoICMP &&
		(p.icmpType == icmp4EchoRequest && !p.v6 || p.icmpType == icmp6EchoRequest && p.v6)
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }

// v4mapped stores a 4-byte address as ::ffff:a.b.c.d.
func v4mapped(dst *[16]byte, a []byte) {
	*dst = [16]byte{10: 0xff, 11: 0xff}
	copy(dst[12:], a[:4])
}

func isV4Mapped(a []byte) bool {
	return be32(a[0:]) == 0 && be32(a[4:]) == 0 && be32(a[8:]) == 0xffff
}

// parse fills p, the zero packet (a fresh variable: zeroing it again cost
// every packet 2 ns), from the IP packet b. It returns false for a
// truncated or inconsistent packet (DropMalformed); anything it cannot
// judge but that is well formed is reported through p.kind. It never
// panics on any input.
func parse(b []byte, p *packet) bool {
	if len(b) == 0 {
		return false
	}
	switch b[0] >> 4 {
	case 4:
		return parse4(b, p)
	case 6:
		return parse6(b, p)
	}
	p.kind = kindNotIP
	return true
}

func parse4(b []byte, p *packet) bool {
	if len(b) < 20 {
		return false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(be16(b[2:]))
	if ihl < 20 || total < ihl || total > len(b) {
		return false
	}
	b = b[:total]
	v4mapped(&p.src, b[12:16])
	v4mapped(&p.dst, b[16:20])
	p.ipLen, p.ipHdr = total, ihl
	p.fragID = uint32(be16(b[4:]))
	frag := be16(b[6:])
	if frag&0x1fff != 0 {
		p.kind, p.proto = kindFragment, policy.Protocol(b[9])
		return !overlapsL4(frag&0x1fff, b[9])
	}
	p.firstFrag = frag&0x2000 != 0
	return parseL4(b[ihl:], b[9], p)
}

// ipv6 next-header values the parser walks over.
const (
	nhHopByHop = 0
	nhRouting  = 43
	nhFragment = 44
	nhDestOpts = 60
)

// skipExt6 walks the IPv6 extension headers of b starting at off with
// next-header nh. It returns the transport protocol and its offset, the
// fragment offset and identification if a fragment header was present, and
// whether more fragments follow. ok is false if the chain is truncated.
func skipExt6(b []byte, off int, nh uint8) (proto uint8, l4 int, fragOff uint16, fragID uint32, more, ok bool) {
	for range 16 {
		switch nh {
		case nhHopByHop, nhRouting, nhDestOpts:
			if len(b) < off+8 {
				return
			}
			n := (int(b[off+1]) + 1) * 8
			if len(b) < off+n {
				return
			}
			nh, off = b[off], off+n
		case nhFragment:
			if len(b) < off+8 {
				return
			}
			fo := be16(b[off+2:])
			fragOff, more, fragID = fo>>3, fo&1 != 0, be32(b[off+4:])
			nh, off = b[off], off+8
			if fragOff != 0 {
				return nh, off, fragOff, fragID, more, true
			}
		default:
			return nh, off, fragOff, fragID, more, true
		}
	}
	return
}

func parse6(b []byte, p *packet) bool {
	if len(b) < 40 {
		return false
	}
	total := 40 + int(be16(b[4:]))
	if total > len(b) {
		return false
	}
	b = b[:total]
	if isV4Mapped(b[8:24]) || isV4Mapped(b[24:40]) {
		return false // never valid on the wire, and would alias IPv4 endpoints
	}
	p.v6 = true
	copy(p.src[:], b[8:24])
	copy(p.dst[:], b[24:40])
	p.ipLen = total
	nh, off, fragOff, fragID, more, ok := skipExt6(b, 40, b[6])
	if !ok {
		return false
	}
	p.ipHdr, p.fragID = off, fragID
	if fragOff != 0 {
		p.kind, p.proto = kindFragment, policy.Protocol(nh)
		if nh == protoICMPv6 {
			p.proto = policy.ProtoICMP
		}
		return !overlapsL4(fragOff, nh)
	}
	p.firstFrag = more
	return parseL4(b[off:], nh, p)
}

// overlapsL4 reports whether a non-first fragment at offset off (in 8-byte
// units) would overlap the minimal transport header of proto: a TCP
// fragment at offset 8 or 16 can rewrite the flags, or with an
// overlapping first fragment the ports, after the first fragment was
// judged (RFC 1858). Such fragments are malformed. A first fragment too
// short to hold the whole transport header is malformed as well (parseL4
// requires it), so the ports and flags judged are always those delivered.
func overlapsL4(off uint16, proto uint8) bool {
	return proto == uint8(policy.ProtoTCP) && int(off)*8 < 20
}

// parseL4 parses the transport header l4 (the rest of the packet).
func parseL4(l4 []byte, proto uint8, p *packet) bool {
	switch {
	case proto == uint8(policy.ProtoTCP):
		if len(l4) < 20 {
			return false
		}
		doff := int(l4[12]>>4) * 4
		if doff < 20 || doff > len(l4) {
			return false
		}
		p.kind, p.proto = kindFlow, policy.ProtoTCP
		p.sport, p.dport = be16(l4[0:]), be16(l4[2:])
		p.seq, p.ack = be32(l4[4:]), be32(l4[8:])
		p.tcpFlags = l4[13]
		p.payloadLen = len(l4) - doff
		return true
	case proto == uint8(policy.ProtoUDP):
		if len(l4) < 8 {
			return false
		}
		if n := int(be16(l4[4:])); !p.firstFrag && (n < 8 || n > len(l4)) {
			return false
		}
		p.kind, p.proto = kindFlow, policy.ProtoUDP
		p.sport, p.dport = be16(l4[0:]), be16(l4[2:])
		return true
	case proto == uint8(policy.ProtoICMP) && !p.v6, proto == protoICMPv6 && p.v6:
		if len(l4) < 8 {
			return false
		}
		p.proto, p.icmpType = policy.ProtoICMP, l4[0]
		switch {
		case isEcho(l4[0], p.v6):
			p.kind = kindFlow
			p.sport = be16(l4[4:])
			p.dport = p.sport
		case isICMPError(l4[0], p.v6):
			p.kind = kindICMPError
			return parseQuoted(l4[8:], p)
		default:
			p.kind = kindICMPOther
		}
		return true
	}
	p.kind, p.proto = kindUnsupported, policy.Protocol(proto)
	return true
}

func isEcho(typ uint8, v6 bool) bool {
	if v6 {
		return typ == icmp6EchoRequest || typ == icmp6EchoReply
	}
	return typ == icmp4EchoRequest || typ == icmp4EchoReply
}

// isICMPError reports ICMP error types that quote the offending packet:
// v4 destination unreachable, time exceeded, parameter problem; v6
// destination unreachable, packet too big, time exceeded, parameter problem.
func isICMPError(typ uint8, v6 bool) bool {
	if v6 {
		return typ >= 1 && typ <= 4
	}
	return typ == 3 || typ == 11 || typ == 12
}

// parseQuoted parses the packet quoted in an ICMP error: an IP header of
// the same family and at least 8 bytes of its transport header (all that
// RFC 792 guarantees). It returns false if the quote is truncated below
// that; a quote without a trackable tuple leaves innerProto zero.
func parseQuoted(q []byte, p *packet) bool {
	var proto uint8
	var l4 []byte
	if !p.v6 {
		if len(q) < 20 || q[0]>>4 != 4 {
			return false
		}
		ihl := int(q[0]&0x0f) * 4
		if ihl < 20 || len(q) < ihl+8 {
			return false
		}
		if be16(q[6:])&0x1fff != 0 {
			return true // quoted a non-first fragment: no ports
		}
		v4mapped(&p.innerSrc, q[12:16])
		v4mapped(&p.innerDst, q[16:20])
		proto, l4 = q[9], q[ihl:]
	} else {
		if len(q) < 40 || q[0]>>4 != 6 {
			return false
		}
		nh, off, fragOff, _, _, ok := skipExt6(q, 40, q[6])
		if !ok || len(q) < off+8 {
			return false
		}
		if fragOff != 0 {
			return true
		}
		copy(p.innerSrc[:], q[8:24])
		copy(p.innerDst[:], q[24:40])
		proto, l4 = nh, q[off:]
	}
	switch {
	case proto == uint8(policy.ProtoTCP), proto == uint8(policy.ProtoUDP):
		p.innerProto = policy.Protocol(proto)
		p.innerSport, p.innerDport = be16(l4[0:]), be16(l4[2:])
	case proto == uint8(policy.ProtoICMP) && !p.v6, proto == protoICMPv6 && p.v6:
		if isEcho(l4[0], p.v6) {
			p.innerProto = policy.ProtoICMP
			p.innerSport = be16(l4[4:])
			p.innerDport = p.innerSport
		}
	}
	return true
}
