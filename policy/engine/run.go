package engine

import "github.com/weft-net/weft/policy"

// Run carries what a batch of packets has in common from one packet to the
// next, for InboundRun and OutboundRun.
//
// wireguard-go hands over packets in batches (a TUN read of a TSO
// super-packet split into segments, a UDP receive coalesced by GRO and
// decrypted), and in a bulk transfer most of a batch is one flow: the same
// addresses, ports and protocol, packet after packet. Judged one by one,
// each pays the whole lookup, and the first of a batch its cache misses:
// the flow's bucket and shard line have mostly left the cache since the
// last batch, pushed out by 64 KiB buffers and the crypto. A Run parses
// every packet (parse, the one parser) and remembers the last one it saw
// accepted as an established or newly opened TCP or UDP flow; it accepts
// the next one without a lookup when it is of the same flow, direction and
// table generation, is neither a fragment nor a first fragment, and for
// TCP has none of SYN, FIN and RST (the flags that can change a flow's
// state). Those are exactly the packets the lookup would accept the same
// way: same key, same entry, same generation, flags that change nothing.
// Anything else goes through the lookup and becomes the remembered packet
// if it qualifies.
//
// A Run is for one goroutine and one batch: the zero value is ready, and
// End adds the packets it accepted to the engine's counters. The verdicts,
// the counters and the conntrack entries come out as with Inbound and
// Outbound packet by packet, except the flow's last-seen time, which the
// first packet of each batch refreshes (once per 50 ms tick at most
// anyway).
type Run struct {
	src, dst     [16]byte
	sport, dport uint16
	proto        policy.Protocol // 0: nothing remembered
	gen          uint32          // table generation of the remembered verdict
	v            Verdict
	n            uint32 // packets accepted from memory, not yet counted
	out          bool
}

// InboundRun is Inbound for the packets of a batch, in order, with run r.
func (e *Engine) InboundRun(pkt []byte, r *Run) Verdict { return e.runVerdict(pkt, r, false) }

// OutboundRun is Outbound for the packets of a batch, in order, with run
// r.
func (e *Engine) OutboundRun(pkt []byte, r *Run) Verdict { return e.runVerdict(pkt, r, true) }

// runVerdict is InboundRun (out false) and OutboundRun.
func (e *Engine) runVerdict(pkt []byte, r *Run, out bool) Verdict {
	s := e.snap.Load()
	var p packet
	if !parse(pkt, &p) {
		e.flushRun(r)
		r.proto = 0
		return e.count(&p, DropMalformed, out)
	}
	if r.same(&p, s.gen, out) {
		r.n++
		return r.v
	}
	var v Verdict
	if out {
		v = e.judgeOut(&p, s, e.clk.now())
	} else {
		v = e.judgeIn(&p, s, e.clk.now())
	}
	r.remember(e, &p, v, s.gen, out)
	return v
}

// End counts the packets r accepted from memory and resets r.
func (e *Engine) End(r *Run) {
	e.flushRun(r)
	*r = Run{}
}

// flushRun counts r's remembered packets on a stripe of r's direction
// picked by its ports (any stripe of the right direction keeps the two
// cores apart).
func (e *Engine) flushRun(r *Run) {
	if r.n > 0 {
		e.stats[stripeOf(r.out, byte(r.sport^r.dport))].n[r.v].Add(uint64(r.n))
		r.n = 0
	}
}

// remember makes p, judged v under the table of generation gen, the
// remembered packet if it is plain, and forgets the previous one
// otherwise.
func (r *Run) remember(e *Engine, p *packet, v Verdict, gen uint32, out bool) {
	e.flushRun(r) // the counts go to the remembered verdict's stripe
	r.proto = 0
	if (v != Accept && v != AcceptLocal) || !plain(p) {
		return
	}
	r.src, r.dst, r.sport, r.dport, r.proto = p.src, p.dst, p.sport, p.dport, p.proto
	r.gen, r.v, r.out = gen, v, out
}

// same reports whether p is a plain packet of the remembered flow, in the
// remembered direction, at the remembered generation.
func (r *Run) same(p *packet, gen uint32, out bool) bool {
	return r.proto != 0 && p.proto == r.proto && r.out == out && gen == r.gen &&
		p.sport == r.sport && p.dport == r.dport && p.src == r.src && p.dst == r.dst && plain(p)
}

// plain reports whether p, parsed, is a TCP segment without SYN, FIN or
// RST or a UDP datagram, neither a fragment nor a first fragment: one
// whose verdict, for an established flow, is that of the flow.
func plain(p *packet) bool {
	return p.kind == kindFlow && !p.firstFrag &&
		(p.proto == policy.ProtoUDP || p.proto == policy.ProtoTCP && p.tcpFlags&(tcpSYN|tcpFIN|tcpRST) == 0)
}
