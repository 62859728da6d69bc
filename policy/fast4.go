package policy

import (
	"encoding/binary"
	"sync/atomic"
)

// fastUntried is a hint for the generic path: the IPv4 fast path did not
// look the packet's flow up (not IPv4, not a complete tcp/udp/echo packet,
// a fragment, or a concurrent writer).
const fastUntried = -1

// fast4 is the established-flow fast path for IPv4: it reads only the
// fields the conntrack lookup needs (version, header and total lengths,
// fragment bits, protocol, addresses, ports or echo id, TCP flags) straight
// from the packet, without filling a packet struct. It accepts exactly what
// parse + fast would accept: it declines (hint fastUntried) every packet
// parse could judge otherwise (malformed, fragments, first fragments,
// ICMP other than echo, other protocols). On a decline or a miss the caller
// takes the generic path; hint fastAbsent says the flow is not tracked (a
// consistent read), so the generic path can skip its own lock-free lookup.
// out selects the Outbound rules (the source must be local; a destination
// in the local subnet is hair-pinned and must be local too).
func (e *Engine) fast4(b []byte, s *snapshot, now int64, out bool) (v Verdict, hint int) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return 0, fastUntried
	}
	be := binary.BigEndian
	ihl := int(b[0]&0x0f) * 4
	total := int(be.Uint16(b[2:]))
	if ihl < 20 || total < ihl || total > len(b) || be.Uint16(b[6:])&0x3fff != 0 {
		return 0, fastUntried
	}
	l4 := b[ihl:total]
	proto := Protocol(b[9])
	var sport, dport uint16
	var flags uint8
	switch proto {
	case ProtoTCP:
		if len(l4) < 20 {
			return 0, fastUntried
		}
		if doff := int(l4[12]>>4) * 4; doff < 20 || doff > len(l4) {
			return 0, fastUntried
		}
		sport, dport, flags = be.Uint16(l4[0:]), be.Uint16(l4[2:]), l4[13]
	case ProtoUDP:
		if len(l4) < 8 {
			return 0, fastUntried
		}
		if n := int(be.Uint16(l4[4:])); n < 8 || n > len(l4) {
			return 0, fastUntried
		}
		sport, dport = be.Uint16(l4[0:]), be.Uint16(l4[2:])
	case ProtoICMP:
		if len(l4) < 8 || l4[0] != icmp4EchoRequest && l4[0] != icmp4EchoReply {
			return 0, fastUntried
		}
		sport = be.Uint16(l4[4:])
		dport = sport
	default:
		return 0, fastUntried
	}
	src, dst := be.Uint32(b[12:]), be.Uint32(b[16:])
	// The key, as setKey4 builds it, in registers.
	srcIsA := src < dst || src == dst && sport <= dport
	k0 := uint64(src)<<32 | uint64(dst)
	k1 := uint64(sport)<<48 | uint64(dport)<<32 | uint64(proto)
	if !srcIsA {
		k0 = uint64(dst)<<32 | uint64(src)
		k1 = uint64(dport)<<48 | uint64(sport)<<32 | uint64(proto)
	}
	ct := e.ct
	h := hash4(k0^ct.seed, k1)
	sh := &ct.shards[h&ct.mask]
	seq := sh.seq.Load()
	tab := sh.t4.Load()
	if seq&1 != 0 {
		return 0, fastUntried
	}
	if tab == nil {
		if sh.seq.Load() != seq {
			return 0, fastUntried
		}
		return 0, fastAbsent
	}
	// ctTable.find for a 4-word IPv4 slot: key, key, meta, lastSeen.
	w := tab.w
	i := tab.home(h)
	var slot []uint64
	var meta uint64
	for range tab.cap {
		slot = w[i*4 : i*4+4 : i*4+4]
		if meta = atomic.LoadUint64(&slot[2]); meta == 0 {
			break
		}
		if atomic.LoadUint64(&slot[0]) == k0 && atomic.LoadUint64(&slot[1]) == k1 {
			break
		}
		meta = 0
		if i++; i == tab.cap {
			i = 0
		}
	}
	var seen int64
	if meta != 0 {
		seen = int64(atomic.LoadUint64(&slot[3]))
	}
	if sh.seq.Load() != seq {
		return 0, fastUntried
	}
	if meta == 0 {
		return 0, fastAbsent
	}
	ent := entryOf(meta, seen)
	t := s.t
	if out && (!ent.local(srcIsA) || t.hasSubnet4 && dst&t.mask4 == t.subnet4 && !ent.local(!srcIsA)) ||
		!out && !ent.local(!srcIsA) ||
		ent.gen != s.gen || ent.flags&flRevoked != 0 || ct.expired(proto, ent, now) ||
		proto == ProtoTCP && tcpFlagsChange(flags, ent.flags) {
		return 0, fastUntried
	}
	if now > seen {
		atomic.StoreUint64(&slot[3], uint64(now))
	}
	v = Accept
	if out && t.hasSubnet4 && dst&t.mask4 == t.subnet4 {
		v = AcceptLocal
	}
	e.stats[(b[15]^b[19])%statStripes].n[v].Add(1)
	return v, fastHit
}
