// Package pkttest builds IPv4 and IPv6 test packets with correct checksums
// and checks the checksums of packets under test. It is for tests of any
// package on the weft data path; it depends on the standard library only.
//
// Builders pick the IP version from the address family (both addresses
// must be of the same family) and return a fresh slice owned by the caller.
package pkttest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// TCP flags.
const (
	FIN uint8 = 0x01
	SYN uint8 = 0x02
	RST uint8 = 0x04
	PSH uint8 = 0x08
	ACK uint8 = 0x10
)

// IP protocol numbers used here.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// TCP returns a TCP segment (20-byte header, window 65535) from src to dst.
func TCP(src, dst netip.AddrPort, flags uint8, seq, ack uint32, payload []byte) []byte {
	l4 := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(l4[0:], src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	binary.BigEndian.PutUint32(l4[4:], seq)
	binary.BigEndian.PutUint32(l4[8:], ack)
	l4[12], l4[13] = 5<<4, flags
	binary.BigEndian.PutUint16(l4[14:], 65535)
	copy(l4[20:], payload)
	return IP(src.Addr(), dst.Addr(), ProtoTCP, l4)
}

// UDP returns a UDP datagram from src to dst.
func UDP(src, dst netip.AddrPort, payload []byte) []byte {
	l4 := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(l4[0:], src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	copy(l4[8:], payload)
	return IP(src.Addr(), dst.Addr(), ProtoUDP, l4)
}

// ICMPEcho returns an ICMP (IPv4) or ICMPv6 echo request, or reply if
// reply is set, with 8 bytes of data.
func ICMPEcho(src, dst netip.Addr, id, seq uint16, reply bool) []byte {
	l4 := make([]byte, 16)
	switch {
	case src.Is4() && reply:
		l4[0] = 0
	case src.Is4():
		l4[0] = 8
	case reply:
		l4[0] = 129
	default:
		l4[0] = 128
	}
	binary.BigEndian.PutUint16(l4[4:], id)
	binary.BigEndian.PutUint16(l4[6:], seq)
	copy(l4[8:], "pkttest!")
	return IP(src, dst, icmpProto(src), l4)
}

// ICMPError returns an ICMP(v6) error of the given type and code from src
// to dst, quoting orig (the offending packet, typically sent by dst).
func ICMPError(src, dst netip.Addr, typ, code uint8, orig []byte) []byte {
	l4 := make([]byte, 8+len(orig))
	l4[0], l4[1] = typ, code
	copy(l4[8:], orig)
	return IP(src, dst, icmpProto(src), l4)
}

func icmpProto(a netip.Addr) uint8 {
	if a.Is4() {
		return ProtoICMP
	}
	return ProtoICMPv6
}

// IP wraps the transport message l4 of protocol proto in an IPv4 header
// (TTL 64, no options) or an IPv6 header (hop limit 64) and fills in the
// IP and transport checksums (for TCP, UDP, ICMP and ICMPv6; the checksum
// field of l4 is overwritten).
func IP(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	var b []byte
	if src.Is4() {
		b = make([]byte, 20+len(l4))
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		binary.BigEndian.PutUint16(b[4:], 0x1234)
		b[8], b[9] = 64, proto
		s, d := src.As4(), dst.As4()
		copy(b[12:], s[:])
		copy(b[16:], d[:])
		binary.BigEndian.PutUint16(b[10:], Checksum(b[:20], 0))
		copy(b[20:], l4)
	} else {
		b = make([]byte, 40+len(l4))
		b[0] = 0x60
		binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
		b[6], b[7] = proto, 64
		s, d := src.As16(), dst.As16()
		copy(b[8:], s[:])
		copy(b[24:], d[:])
		copy(b[40:], l4)
	}
	if off := csumOffset(proto); off >= 0 {
		seg := b[len(b)-len(l4):]
		seg[off], seg[off+1] = 0, 0
		c := Checksum(seg, pseudo(b, proto, len(seg)))
		if proto == ProtoUDP && c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(seg[off:], c)
	}
	return b
}

// csumOffset is where the checksum sits in the transport header, or -1.
func csumOffset(proto uint8) int {
	switch proto {
	case ProtoTCP:
		return 16
	case ProtoUDP:
		return 6
	case ProtoICMP, ProtoICMPv6:
		return 2
	}
	return -1
}

// pseudo returns the pseudo-header sum for the transport checksum of the IP
// packet b, or 0 for ICMPv4, which has none.
func pseudo(b []byte, proto uint8, n int) uint32 {
	if b[0]>>4 == 4 {
		if proto == ProtoICMP {
			return 0
		}
		return words(b[12:20]) + uint32(proto) + uint32(n)
	}
	return words(b[8:40]) + uint32(proto) + uint32(n)
}

func words(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

// Checksum returns the Internet checksum (RFC 1071) of b, starting from
// the partial sum initial (e.g. of a pseudo-header).
func Checksum(b []byte, initial uint32) uint16 {
	s := uint64(initial) + uint64(words(b))
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// Valid checks an IPv4 or IPv6 packet without extension headers: lengths,
// the IPv4 header checksum and the TCP, UDP, ICMP or ICMPv6 checksum.
func Valid(pkt []byte) error {
	if len(pkt) == 0 {
		return errors.New("empty packet")
	}
	var proto uint8
	var l4 []byte
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return fmt.Errorf("ipv4: %d bytes, shorter than a header", len(pkt))
		}
		ihl := int(pkt[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:]))
		if ihl < 20 || total != len(pkt) || total < ihl {
			return fmt.Errorf("ipv4: header length %d, total length %d, packet %d bytes", ihl, total, len(pkt))
		}
		if c := Checksum(pkt[:ihl], 0); c != 0 {
			return fmt.Errorf("ipv4: bad header checksum (residue %#04x)", c)
		}
		if binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 {
			return errors.New("ipv4: fragment: transport checksum not checkable")
		}
		proto, l4 = pkt[9], pkt[ihl:]
	case 6:
		if len(pkt) < 40 {
			return fmt.Errorf("ipv6: %d bytes, shorter than a header", len(pkt))
		}
		if n := int(binary.BigEndian.Uint16(pkt[4:])); 40+n != len(pkt) {
			return fmt.Errorf("ipv6: payload length %d, packet %d bytes", n, len(pkt))
		}
		proto, l4 = pkt[6], pkt[40:]
	default:
		return fmt.Errorf("not IP: version %d", pkt[0]>>4)
	}
	minLen := map[uint8]int{ProtoTCP: 20, ProtoUDP: 8, ProtoICMP: 8, ProtoICMPv6: 8}[proto]
	if minLen == 0 {
		return fmt.Errorf("protocol %d: not checkable", proto)
	}
	if len(l4) < minLen {
		return fmt.Errorf("protocol %d: %d bytes, shorter than its header", proto, len(l4))
	}
	if proto == ProtoTCP && int(l4[12]>>4)*4 > len(l4) {
		return fmt.Errorf("tcp: data offset %d beyond the segment", l4[12]>>4)
	}
	if proto == ProtoUDP && int(binary.BigEndian.Uint16(l4[4:])) != len(l4) {
		return fmt.Errorf("udp: length field %d, datagram %d bytes", binary.BigEndian.Uint16(l4[4:]), len(l4))
	}
	if proto == ProtoICMP && pkt[0]>>4 == 6 || proto == ProtoICMPv6 && pkt[0]>>4 == 4 {
		return fmt.Errorf("protocol %d in an IPv%d packet", proto, pkt[0]>>4)
	}
	if c := Checksum(l4, pseudo(pkt, proto, len(l4))); c != 0 {
		return fmt.Errorf("protocol %d: bad checksum (residue %#04x)", proto, c)
	}
	return nil
}

// Fragment4 splits an IPv4 packet (no options) into fragments carrying at
// most size bytes of payload each (size is rounded down to a multiple of 8).
func Fragment4(pkt []byte, size int) [][]byte {
	size &^= 7
	hdr, payload := pkt[:20], pkt[20:]
	var frags [][]byte
	for off := 0; off < len(payload); off += size {
		end := min(off+size, len(payload))
		f := make([]byte, 20+end-off)
		copy(f, hdr)
		copy(f[20:], payload[off:end])
		binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
		fo := uint16(off / 8)
		if end < len(payload) {
			fo |= 0x2000 // more fragments
		}
		binary.BigEndian.PutUint16(f[6:], fo)
		f[10], f[11] = 0, 0
		binary.BigEndian.PutUint16(f[10:], Checksum(f[:20], 0))
		frags = append(frags, f)
	}
	return frags
}
