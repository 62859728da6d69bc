package engine

import (
	"encoding/binary"
	"github.com/weft-net/weft/policy"
)

// Run carries what a batch of packets has in common from one packet to the
// next, for InboundRun and OutboundRun.
//
// wireguard-go hands over packets in batches (a TUN read of a TSO
// super-packet split into segments, a UDP receive coalesced by GRO and
// decrypted), and in a bulk transfer most of a batch is one flow: the same
// addresses, ports and protocol, packet after packet. Judged one by one,
// each pays the whole lookup, and the first of a batch its cache misses:
// the flow's control byte, slot and shard line have mostly left the cache
// since the last batch, pushed out by 64 KiB buffers and the crypto. A
// Run remembers the last packet it saw accepted as an established or newly
// opened IPv4 TCP or UDP flow, and accepts the next one without a lookup
// when it is of the same flow and the same table generation, is neither a
// fragment nor malformed, and for TCP has none of SYN, FIN and RST (the
// flags that can change a flow's state). Those are exactly the packets the
// lookup would accept the same way: same key, same entry, same generation,
// flags that change nothing. Anything else goes through the lookup and
// becomes the remembered packet if it qualifies.
//
// A Run is for one goroutine and one batch: the zero value is ready, and
// End adds the packets it accepted to the engine's counters. The verdicts,
// the counters and the conntrack entries come out as with Inbound and
// Outbound packet by packet, except the flow's last-seen time, which the
// first packet of each batch refreshes (once per 50 ms tick at most
// anyway).
type Run struct {
	addrs uint64 // source and destination address
	ports uint32 // source and destination port
	proto byte   // 0: nothing remembered
	gen   uint32 // table generation of the remembered verdict
	v     Verdict
	n     uint32 // packets accepted from memory, not yet counted
	out   bool
}

// InboundRun is Inbound for the packets of a batch, in order, with run r.
func (e *Engine) InboundRun(pkt []byte, r *Run) Verdict {
	if r.proto != 0 && !r.out && r.same(pkt) && e.snap.Load().gen == r.gen {
		r.n++
		return r.v
	}
	gen := e.snap.Load().gen // before the verdict: see remember
	v := e.Inbound(pkt)
	r.remember(e, pkt, v, gen, false)
	return v
}

// OutboundRun is Outbound for the packets of a batch, in order, with run
// r.
func (e *Engine) OutboundRun(pkt []byte, r *Run) Verdict {
	if r.proto != 0 && r.out && r.same(pkt) && e.snap.Load().gen == r.gen {
		r.n++
		return r.v
	}
	gen := e.snap.Load().gen
	v := e.Outbound(pkt)
	r.remember(e, pkt, v, gen, true)
	return v
}

// End counts the packets r accepted from memory and resets r.
func (e *Engine) End(r *Run) {
	e.flushRun(r)
	*r = Run{}
}

// flushRun counts r's remembered packets on a stripe of r's direction
// picked by its ports (fast4 picks by the flow hash, which a run does not
// keep; any stripe of the right direction keeps the two cores apart).
func (e *Engine) flushRun(r *Run) {
	if r.n > 0 {
		e.stats[stripeOf(r.out, byte(r.ports^r.ports>>16))].n[r.v].Add(uint64(r.n))
		r.n = 0
	}
}

// remember makes pkt, judged v, the remembered packet if it qualifies, and
// forgets the previous one otherwise. gen is the table generation loaded
// before the verdict: if a table was installed meanwhile, v may be of the
// new one, but the next packet then finds a generation other than gen and
// takes the lookup. (Loaded after the verdict, a generation could be newer
// than v's, and the run would accept under a table that never judged it.)
func (r *Run) remember(e *Engine, pkt []byte, v Verdict, gen uint32, out bool) {
	e.flushRun(r) // the counts go to the remembered verdict's stripe
	r.proto = 0
	if (v != Accept && v != AcceptLocal) || !plain4(pkt) {
		return
	}
	be := binary.BigEndian
	r.addrs, r.ports, r.proto = be.Uint64(pkt[12:]), be.Uint32(pkt[20:]), pkt[9]
	r.gen, r.v, r.out = gen, v, out
}

// same reports whether pkt is a plain IPv4 packet (plain4) of the
// remembered flow.
func (r *Run) same(pkt []byte) bool {
	be := binary.BigEndian
	return len(pkt) >= 24 && pkt[9] == r.proto && be.Uint64(pkt[12:]) == r.addrs && be.Uint32(pkt[20:]) == r.ports && plain4(pkt)
}

// plain4 reports whether pkt is an IPv4 packet with a 20-byte header, not
// a fragment, consistent lengths, and a TCP segment without SYN, FIN or RST
// or a UDP datagram: one whose verdict, for an established flow, is that
// of the flow. fast4 checks the same fields inline rather than calling
// this: it keeps what it read in registers for the lookup, and a split
// into a read step and a lookup step cost established packets 9 ns
// (docs/policy.md).
func plain4(b []byte) bool {
	be := binary.BigEndian
	if len(b) < 28 || b[0] != 0x45 || be.Uint16(b[6:])&0x3fff != 0 {
		return false
	}
	total := int(be.Uint16(b[2:]))
	if total < 28 || total > len(b) {
		return false
	}
	l4 := b[20:total]
	switch policy.Protocol(b[9]) {
	case policy.ProtoTCP:
		if len(l4) < 20 {
			return false
		}
		doff := int(l4[12]>>4) * 4
		return doff >= 20 && doff <= len(l4) && l4[13]&(tcpSYN|tcpFIN|tcpRST) == 0
	case policy.ProtoUDP:
		n := int(be.Uint16(l4[4:]))
		return n >= 8 && n <= len(l4)
	}
	return false
}
