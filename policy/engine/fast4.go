package engine

import (
	"encoding/binary"
	"github.com/weft-net/weft/policy"
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
// in the local subnet is hair-pinned and must be local too). With open
// (inbound only), a consistent miss may open the flow right here and
// accept the packet (a hit): see the miss below.
func (e *Engine) fast4(b []byte, s *snapshot, now int64, out, open bool) (v Verdict, hint int) {
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
	proto := policy.Protocol(b[9])
	var sport, dport uint16
	var flags uint8
	switch proto {
	case policy.ProtoTCP:
		if len(l4) < 20 {
			return 0, fastUntried
		}
		if doff := int(l4[12]>>4) * 4; doff < 20 || doff > len(l4) {
			return 0, fastUntried
		}
		sport, dport, flags = be.Uint16(l4[0:]), be.Uint16(l4[2:]), l4[13]
	case policy.ProtoUDP:
		if len(l4) < 8 {
			return 0, fastUntried
		}
		if n := int(be.Uint16(l4[4:])); n < 8 || n > len(l4) {
			return 0, fastUntried
		}
		sport, dport = be.Uint16(l4[0:]), be.Uint16(l4[2:])
	case policy.ProtoICMP:
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
	tab := sh.view4()
	if seq&1 != 0 {
		return 0, fastUntried
	}
	// The flow's home slot in t4, its control byte and key inline; then
	// the nursery, whose control bytes share the shard's cache line; then
	// a probe of t4 (find4) unless the home slot is empty.
	var slot *[4]uint64
	var meta uint64
	base, found, home := 0, false, uint64(0)
	want := tagOf(h) * bytesLSB
	var tw uint64 // see fromHome
	if tab.cap != 0 {
		i := tab.home(h)
		tw = fromHome(tab.tagWord(i), i)
		home = tw & 0xff
		if home == want&0xff {
			// A flow still in the nursery may find its own reserved
			// slot here, zeros (meta 0): see nurseOpenLocked.
			slot = tab.slot(int(i) * 4)
			meta = atomic.LoadUint64(&slot[2])
			found = meta != 0 && atomic.LoadUint64(&slot[0]) == k0 && atomic.LoadUint64(&slot[1]) == k1
		}
	}
	// The nursery: both control-byte words checked at once, without a
	// loop (a new flow, the common case here, matches neither).
	if !found && zeroBytes(atomic.LoadUint64(&sh.ntags[0])^want)|zeroBytes(atomic.LoadUint64(&sh.ntags[1])^want) != 0 {
		if j, m := sh.nurseFind(h, k0, k1); j >= 0 {
			slot, meta, found = (*[4]uint64)(sh.nurse[j*4:j*4+4]), m, true
		}
	}
	if !found && home != 0 && mayHold(tw, want) {
		if base, meta, found = tab.find4(h, k0, k1); found {
			slot = tab.slot(base)
		}
	}
	var seen int64
	if found {
		seen = int64(atomic.LoadUint64(&slot[3]))
	}
	if sh.seq.Load() != seq || base < 0 {
		return 0, fastUntried
	}
	if !found {
		// A new inbound flow, opened with what was read above when the
		// table allows it. Everything else is left to the generic path,
		// which judges (and logs) it from the start: denials, a RST, an
		// echo reply, and every packet while the flow log is on. What is
		// accepted here, and the entry made, are those of inbound. This
		// was a function of its own (open4) until its sixteen arguments
		// cost more than its body saved (docs/policy.md, "Decisions").
		if !open || e.flog.Load() != nil ||
			proto == policy.ProtoTCP && flags&tcpRST != 0 ||
			proto == policy.ProtoICMP && l4[0] != icmp4EchoRequest {
			return 0, fastAbsent
		}
		t := s.t
		de, ok := t.ep4.get(dst)
		if !ok || !de.local {
			return 0, fastAbsent
		}
		se, ok := t.ep4.get(src)
		if !ok {
			return 0, fastAbsent
		}
		// t.pairAllows, inline (it is too big to inline itself).
		sp, ok := t.pairs.get(pairKeyOf(se.app, de.app, proto))
		if !ok || proto.HasPorts() && !t.portsAllow(sp, dport) {
			return 0, fastAbsent
		}
		ent := flowEntry{lastSeen: now, gen: s.gen, flags: flPolicy | sideFlag(!srcIsA)}
		if srcIsA {
			ent.flags |= flOrigA
		}
		if se.local {
			ent.flags |= sideFlag(srcIsA)
		}
		if proto == policy.ProtoTCP && flags&tcpFIN != 0 {
			ent.flags |= flClosing
		}
		if sh.tryLock(seq) {
			// Nothing in the shard changed since the miss. insertLocked's
			// common case without its call and key: room in the nursery,
			// the shard and t4.
			if !sh.nurseOpenLocked(k0, k1, h, tw, ent) { // tw: see fromHome
				ct.insertLocked(sh, &ctKey{w: [5]uint64{k0, k1}, h: h}, ent, now)
			}
			sh.opened++ // counted here, not in e.stats; guarded by seq
			releaseSeq(&sh.seq)
			return Accept, fastHit
		}
		// The shard changed since the miss: another packet may have
		// opened the flow, in either direction. The generic path looks
		// again, under the lock before it inserts.
		return 0, fastUntried
	}
	ent := entryOf(meta, seen)
	t := s.t
	if out && (!ent.local(srcIsA) || t.hasSubnet4 && dst&t.mask4 == t.subnet4 && !ent.local(!srcIsA)) ||
		!out && !ent.local(!srcIsA) ||
		ent.gen != s.gen || ent.flags&flRevoked != 0 || ct.expired(proto, ent, now) ||
		proto == policy.ProtoTCP && tcpFlagsChange(flags, ent.flags, srcIsA) {
		return 0, fastUntried
	}
	if now > seen {
		atomic.StoreUint64(&slot[3], uint64(now))
	}
	v = Accept
	if out && t.hasSubnet4 && dst&t.mask4 == t.subnet4 {
		v = AcceptLocal
	}
	e.stats[stripeOf(out, byte(h>>16))].n[v].Add(1)
	return v, fastHit
}

// fromHome returns the control bytes of word w from slot i's to the end
// of the word, in the low bytes, the bytes past the end filled with 0xff
// (full slots: see mayHold).
func fromHome(w, i uint64) uint64 {
	off := i & 7 * 8
	return w>>off | ^(^uint64(0) >> off)
}

// mayHold reports whether the probe run of a key with control byte want
// (repeated in every byte) may hold it beyond its home slot, from tw, the
// control bytes from the home slot to the end of their word: false when
// the run ends in tw (an empty byte) with no match after the home slot,
// which fast4 has checked itself. Most runs are that short, so a new
// flow mostly skips find4's second scan. Bytes of tw past the word's end
// read as full slots of tag 0xff: they never end the run, and match a
// want of 0xff only, which then takes find4, as it would anyway.
func mayHold(tw, want uint64) bool {
	empty := ^tw & bytesMSB
	x := tw ^ want
	match := zeroBytes(x) &^ 0xff
	return empty == 0 || match&(empty&-empty-1) != 0
}
