package engine

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine/pkttest"
)

// FuzzEngineModel is a stateful model-based test of the engine: a sequence
// of operations read from the fuzz input (packets of every kind both ways,
// table swaps that move endpoints and change rules, clock advances,
// ExpireFlows, ResumeTracking, batches judged as runs) goes to the engine
// and to engineModel, a plain map-based statement of what the engine must
// decide, written from the rules of docs/policy.md and not from the
// engine's code. Every verdict, the number of tracked flows, what
// ExpireFlows removes and the verdict counters must agree. The seed corpus
// (random inputs) runs with plain `go test`; `go test -run '^$' -fuzz
// FuzzEngineModel -fuzzminimizetime 1x ./policy/engine/` searches further (the
// default minimisation of a long input takes minutes).
//
// A deliberate bug makes it fail at once: skipping the revalidation of a
// tracked flow after a table swap (fast path or locked path), expiring at
// the timeout rather than after it, or not marking a TCP flow answered.
func FuzzEngineModel(f *testing.F) {
	for seed := range uint64(24) {
		rng := rand.New(rand.NewPCG(seed, 27))
		b := make([]byte, 2000+rng.IntN(4000))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { runModel(t, &choices{b: b}) })
}

// choices hands out the fuzz input as small numbers.
type choices struct{ b []byte }

// n returns a number in [0, k), 0 once the input is used up.
func (c *choices) n(k int) int {
	if len(c.b) == 0 {
		return 0
	}
	v := int(c.b[0]) % k
	c.b = c.b[1:]
	return v
}

func (c *choices) done() bool { return len(c.b) == 0 }

// The model's world: three local and three remote IPv4 addresses, two of
// each for IPv6, four apps, four ports. Every table registers a random
// subset of the addresses; few ports and addresses make flows meet
// (replies, reused tuples, flows opened from both ends).
var (
	modelLocal4  = []netip.Addr{netip.MustParseAddr("10.255.1.1"), netip.MustParseAddr("10.255.1.2"), netip.MustParseAddr("10.255.1.3")}
	modelRemote4 = []netip.Addr{netip.MustParseAddr("10.255.2.1"), netip.MustParseAddr("10.255.2.2"), netip.MustParseAddr("10.255.2.3")}
	modelLocal6  = []netip.Addr{netip.MustParseAddr("fd00:1::1"), netip.MustParseAddr("fd00:1::2")}
	modelRemote6 = []netip.Addr{netip.MustParseAddr("fd00:2::1"), netip.MustParseAddr("fd00:2::2")}
	modelApps    = []string{"m0", "m1", "m2"}
	modelSteps   = []time.Duration{time.Millisecond, clockTick, clockTick, time.Second, time.Second, 9 * time.Second,
		10 * time.Second, 11 * time.Second, 29 * time.Second, 31 * time.Second, 59 * time.Second, 61 * time.Second, 2 * time.Hour}
)

func runModel(t *testing.T, c *choices) {
	cfg := Config{MaxFlows: 1 << 16} // 256 a shard: no evictions with these few flows
	e := newTestEngine(t, cfg)
	m := newEngineModel(e, cfg.withDefaults())
	if c.n(2) == 1 {
		// The flow log sends new flows down the generic path.
		e.SetFlowLog(slog.NewTextHandler(io.Discard, nil))
		defer e.SetFlowLog(nil)
	}
	m.swap(c)
	var runs [2]Run // inbound, outbound
	endRuns := func() {
		e.End(&runs[in])
		e.End(&runs[out])
	}
	var trace []string
	fail := func(format string, args ...any) {
		t.Helper()
		if len(trace) > 40 {
			trace = trace[len(trace)-40:]
		}
		t.Fatalf("%s\nlast operations:\n%s", fmt.Sprintf(format, args...), strings.Join(trace, "\n"))
	}
	for step := 0; !c.done(); step++ {
		switch op := c.n(32); {
		case op == 0:
			m.swap(c)
			trace = append(trace, fmt.Sprintf("%d: SetTable gen %d: %v %v", step, m.gen, m.eps, m.rules))
		case op == 1:
			endRuns() // a batch does not span a clock step: see Run
			d := modelSteps[c.n(len(modelSteps))]
			e.clk.advance(d)
			m.now += int64(d)
			trace = append(trace, fmt.Sprintf("%d: clock +%v", step, d))
		case op == 2:
			endRuns()
			got, want := e.ExpireFlows(e.clk.epoch.Add(time.Duration(e.clk.now()))), m.expire()
			trace = append(trace, fmt.Sprintf("%d: ExpireFlows = %d", step, got))
			if got != want {
				fail("ExpireFlows removed %d flows, the model %d", got, want)
			}
		case op == 3:
			e.ResumeTracking()
			m.unseenUDP = m.now + m.timeouts[toUDP]
			trace = append(trace, fmt.Sprintf("%d: ResumeTracking", step))
		case op == 4:
			endRuns()
		default:
			p := m.packet(c)
			var got Verdict
			switch viaRun := c.n(4) == 0; {
			case viaRun && p.dir == in:
				got = e.InboundRun(p.b, &runs[in])
			case viaRun:
				got = e.OutboundRun(p.b, &runs[out])
			case p.dir == in:
				got = e.Inbound(p.b)
			default:
				got = e.Outbound(p.b)
			}
			want := m.judge(p)
			trace = append(trace, fmt.Sprintf("%d: %v %s = %v", step, p.dir, p, got))
			if got != want {
				fail("%v %s: engine %v, model %v", p.dir, p, got, want)
			}
		}
		if n, want := e.Flows(), len(m.flows); n != want {
			fail("after step %d: engine tracks %d flows, the model %d", step, n, want)
		}
	}
	endRuns()
	got := e.Counters()
	if got.Verdicts != m.counts {
		fail("counters %v, model %v", got.Verdicts, m.counts)
	}
	if got.Evictions != 0 {
		fail("%d evictions", got.Evictions)
	}
}

// mKey is a flow in the model: its two endpoints in either order (lo <=
// hi) and the protocol. ICMP echo uses the identifier as both ports.
type mKey struct {
	lo, hi netip.AddrPort
	proto  policy.Protocol
}

func keyOf(src, dst netip.AddrPort, proto policy.Protocol) mKey {
	if src.Compare(dst) > 0 {
		src, dst = dst, src
	}
	return mKey{src, dst, proto}
}

// mFlow is a tracked flow: who opened it (the client), whether a rule
// governs it (policy: opened into a local container under a rule), TCP
// state, and whether a table change cut it (revoked: a tombstone).
type mFlow struct {
	client                    netip.AddrPort
	policy, answered, closing bool
	revoked                   bool
	gen                       int // the table the flow was last checked against
	seen                      int64
}

type mEndpoint struct {
	app   string
	local bool
}

type mFrag struct {
	key  fragKey
	seen int64
}

// engineModel is the reference: what the engine must decide, from plain
// maps, lists and linear scans.
type engineModel struct {
	e         *Engine // only for the fragment cache's slot function and counters' layout
	timeouts  [5]int64
	now       int64
	gen       int
	eps       map[netip.Addr]mEndpoint
	rules     []policy.Rule
	flows     map[mKey]*mFlow
	frags     map[*fragSlot]mFrag // the fragment cache forgets on a slot collision
	unseenUDP int64
	recent    [][2]netip.AddrPort // the latest new tuples, for packets of flows under way
	opened    [][2]netip.AddrPort // the latest flows opened
	counts    [numVerdicts]uint64
}

func newEngineModel(e *Engine, cfg Config) *engineModel {
	return &engineModel{
		e: e,
		timeouts: [5]int64{toTCP: int64(cfg.TCPTimeout), toTCPClosing: int64(cfg.TCPClosing), toUDP: int64(cfg.UDPTimeout),
			toICMP: int64(cfg.ICMPTimeout), toTCPUnanswered: int64(min(cfg.TCPUnanswered, cfg.TCPTimeout))},
		flows: map[mKey]*mFlow{},
		frags: map[*fragSlot]mFrag{},
	}
}

// swap installs a new table in the engine and the model: a random one,
// or the current one with a rule removed or added or an endpoint changed
// (moved to another app, made local or remote, unregistered).
func (m *engineModel) swap(c *choices) {
	switch op := c.n(5); {
	case m.eps == nil || op == 0:
		m.eps = map[netip.Addr]mEndpoint{}
		for _, a := range modelAddrs() {
			if c.n(8) != 0 {
				m.eps[a] = m.randomEndpoint(c, a)
			}
		}
		m.rules = nil
		for range 4 + c.n(10) {
			m.rules = append(m.rules, randomRule(c))
		}
	case op == 1 && len(m.rules) > 0:
		m.rules = without(m.rules, c.n(len(m.rules)))
	case op == 2:
		m.rules = append(m.rules, randomRule(c))
	default:
		a := modelAddrs()[c.n(len(modelAddrs()))]
		if c.n(4) == 0 {
			delete(m.eps, a)
		} else {
			m.eps[a] = m.randomEndpoint(c, a)
		}
	}
	var eps []Endpoint
	for _, a := range modelAddrs() {
		if ep, ok := m.eps[a]; ok {
			eps = append(eps, Endpoint{IP: a, App: ep.app, Local: ep.local})
		}
	}
	m.gen++
	m.e.SetTable(Compile(TableConfig{Rules: m.rules, Endpoints: eps, LocalSubnet: localSubnet}))
}

func modelAddrs() []netip.Addr {
	return append(append(append(append([]netip.Addr(nil), modelLocal4...), modelRemote4...), modelLocal6...), modelRemote6...)
}

// inLocalSet reports whether a is one of the model's local addresses.
func inLocalSet(a netip.Addr) bool {
	return a.Is4() && localSubnet.Contains(a) || a.Is6() && a.As16()[3] == 1
}

func (m *engineModel) randomEndpoint(c *choices, a netip.Addr) mEndpoint {
	ep := mEndpoint{app: modelApps[c.n(len(modelApps))], local: inLocalSet(a)}
	if c.n(8) == 0 {
		ep.local = !ep.local // a registry that disagrees with the subnet
	}
	return ep
}

func randomRule(c *choices) policy.Rule {
	r := policy.Rule{Source: modelApps[c.n(len(modelApps))], Destination: modelApps[c.n(len(modelApps))]}
	r.Protocol = [...]policy.Protocol{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoICMP, policy.ProtoAll}[c.n(4)]
	if r.Protocol != policy.ProtoICMP {
		lo := uint16(1 + c.n(4))
		r.Ports = policy.PortRange{Start: lo, End: lo + uint16(c.n(int(5-lo)))}
	}
	return r
}

func (m *engineModel) endpoint(a netip.Addr) (mEndpoint, bool) { ep, ok := m.eps[a]; return ep, ok }

func (m *engineModel) isLocal(a netip.Addr) bool { ep, ok := m.eps[a]; return ok && ep.local }

// pairAllows reports whether a rule lets app src reach app dst over proto
// at port.
func (m *engineModel) pairAllows(src, dst string, proto policy.Protocol, port uint16) bool {
	for _, r := range m.rules {
		if r.Source == src && r.Destination == dst && (r.Protocol == proto || r.Protocol == policy.ProtoAll) &&
			(proto == policy.ProtoICMP || r.Ports.Contains(port)) {
			return true
		}
	}
	return false
}

// allowed is a new flow's check: a registered source, a local registered
// destination, a rule.
func (m *engineModel) allowed(src, dst netip.Addr, proto policy.Protocol, port uint16) bool {
	s, ok := m.endpoint(src)
	d, dok := m.endpoint(dst)
	return ok && dok && d.local && m.pairAllows(s.app, d.app, proto, port)
}

// mPacket is a generated packet: its bytes and what the model knows of it.
type mPacket struct {
	b        []byte
	dir      dir
	kind     pktKind
	malform  bool
	src, dst netip.AddrPort
	proto    policy.Protocol
	tcp      uint8 // TCP flags
	echoReq  bool
	first    bool   // a first fragment
	fragID   uint32 // fragments
	inner    mKey   // ICMP errors: the quoted packet's flow
	innerSrc netip.Addr
	innerOK  bool
}

func (p *mPacket) String() string {
	switch {
	case p.malform:
		return fmt.Sprintf("malformed %x", p.b)
	case p.kind == kindICMPError:
		return fmt.Sprintf("icmp error %v -> %v quoting %v %v<->%v (ok %v)", p.src.Addr(), p.dst.Addr(), p.inner.proto, p.inner.lo, p.inner.hi, p.innerOK)
	case p.kind == kindFragment:
		return fmt.Sprintf("fragment %v %v -> %v id %d", p.proto, p.src.Addr(), p.dst.Addr(), p.fragID)
	case p.kind != kindFlow:
		return fmt.Sprintf("kind %d %v -> %v", p.kind, p.src.Addr(), p.dst.Addr())
	}
	return fmt.Sprintf("%v %v -> %v tcp %#x echo-req %v first-frag %v", p.proto, p.src, p.dst, p.tcp, p.echoReq, p.first)
}

// pick returns two different addresses of one family.
func pick(c *choices, v6 bool) (netip.Addr, netip.Addr) {
	set := append(append([]netip.Addr(nil), modelLocal4...), modelRemote4...)
	if v6 {
		set = append(append([]netip.Addr(nil), modelLocal6...), modelRemote6...)
	}
	i, j := c.n(len(set)), c.n(len(set)-1)
	if j >= i {
		j++
	}
	return set[i], set[j]
}

// packet makes a random packet.
func (m *engineModel) packet(c *choices) *mPacket {
	p := &mPacket{kind: kindFlow}
	v6 := c.n(5) == 0
	sa, da := pick(c, v6)
	if !inLocalSet(sa) && !inLocalSet(da) && c.n(8) != 0 {
		// From a remote address, mostly to a local one.
		loc := modelLocal4
		if v6 {
			loc = modelLocal6
		}
		da = loc[c.n(len(loc))]
	}
	p.src, p.dst = netip.AddrPortFrom(sa, uint16(1+c.n(4))), netip.AddrPortFrom(da, uint16(1+c.n(4)))
	if len(m.recent) > 0 && c.n(2) == 0 {
		// A packet of a recent flow, either way: one opened, mostly.
		r := m.recent[c.n(len(m.recent))]
		if len(m.opened) > 0 && c.n(4) != 0 {
			r = m.opened[c.n(len(m.opened))]
		}
		p.src, p.dst, v6 = r[0], r[1], r[0].Addr().Is6()
		if c.n(2) == 0 {
			p.src, p.dst = p.dst, p.src
		}
		sa, da = p.src.Addr(), p.dst.Addr()
	} else {
		m.recent = append(m.recent, [2]netip.AddrPort{p.src, p.dst})
		if len(m.recent) > 12 {
			m.recent = m.recent[1:]
		}
	}
	// Outbound from a local address, inbound from a remote one, mostly.
	if p.dir = in; inLocalSet(sa) {
		p.dir = out
	}
	if c.n(8) == 0 {
		p.dir = 1 - p.dir
	}
	tcpFlags := []uint8{pkttest.SYN, pkttest.SYN | pkttest.ACK, pkttest.ACK, pkttest.ACK, pkttest.FIN | pkttest.ACK, pkttest.RST, pkttest.RST | pkttest.ACK, pkttest.FIN}
	switch k := c.n(20); {
	case k < 8:
		p.proto, p.tcp = policy.ProtoTCP, tcpFlags[c.n(len(tcpFlags))]
		p.b = pkttest.TCP(p.src, p.dst, p.tcp, 1, 1, []byte("x"))
	case k < 12:
		p.proto = policy.ProtoUDP
		p.b = pkttest.UDP(p.src, p.dst, []byte("x"))
	case k < 15:
		p.proto, p.echoReq = policy.ProtoICMP, c.n(2) == 0
		p.src, p.dst = netip.AddrPortFrom(sa, p.src.Port()), netip.AddrPortFrom(da, p.src.Port())
		p.b = pkttest.ICMPEcho(sa, da, p.src.Port(), 1, !p.echoReq)
	case k < 17:
		// An error about a packet the destination sent (or, now and
		// then, someone else did).
		p.kind, p.proto = kindICMPError, policy.ProtoICMP
		qs, qd := p.dst, p.src
		if c.n(6) == 0 {
			a, _ := pick(c, v6)
			qs = netip.AddrPortFrom(a, qs.Port())
		}
		if c.n(6) == 0 {
			a, _ := pick(c, v6)
			qd = netip.AddrPortFrom(a, qd.Port())
		}
		var q []byte
		switch c.n(4) {
		case 0:
			q = pkttest.TCP(qs, qd, pkttest.ACK, 1, 1, nil)
			p.inner, p.innerOK = keyOf(qs, qd, policy.ProtoTCP), true
		case 1:
			q = pkttest.UDP(qs, qd, nil)
			p.inner, p.innerOK = keyOf(qs, qd, policy.ProtoUDP), true
		case 2:
			q = pkttest.ICMPEcho(qs.Addr(), qd.Addr(), qs.Port(), 1, false)
			p.inner, p.innerOK = keyOf(qs, netip.AddrPortFrom(qd.Addr(), qs.Port()), policy.ProtoICMP), true
		default:
			q = pkttest.IP(qs.Addr(), qd.Addr(), 47, make([]byte, 8)) // no tuple
		}
		p.innerSrc = qs.Addr()
		typ := uint8(3)
		if v6 {
			typ = 1
		}
		p.b = pkttest.ICMPError(sa, da, typ, 3, q)
	case k < 19 && !v6:
		// A fragment of a TCP segment or UDP datagram: the first one
		// (which carries the ports) or a later one.
		p.proto = [...]policy.Protocol{policy.ProtoTCP, policy.ProtoUDP}[c.n(2)]
		var whole []byte
		if p.proto == policy.ProtoTCP {
			p.tcp = tcpFlags[c.n(len(tcpFlags))]
			whole = pkttest.TCP(p.src, p.dst, p.tcp, 1, 1, make([]byte, 100))
		} else {
			whole = pkttest.UDP(p.src, p.dst, make([]byte, 100))
		}
		frags := pkttest.Fragment4(whole, 48)
		p.fragID = uint32(1 + c.n(3))
		p.first = c.n(2) == 0
		if p.first {
			p.b = frags[0]
		} else {
			p.kind, p.b = kindFragment, frags[1+c.n(len(frags)-1)]
		}
		p.b[4], p.b[5] = 0, byte(p.fragID)
	case k < 19:
		p.kind, p.proto = kindICMPOther, policy.ProtoICMP
		p.b = pkttest.IP(sa, da, 58, make([]byte, 8))
		p.b[40] = 130 // an MLD query: neither echo nor error
	default:
		switch c.n(3) {
		case 0:
			p.kind, p.proto = kindUnsupported, 47
			p.b = pkttest.IP(sa, da, 47, make([]byte, 8))
		case 1:
			p.kind, p.proto = kindICMPOther, policy.ProtoICMP
			p.b = pkttest.IP(sa, da, 1, make([]byte, 8))
			if v6 {
				p.b = pkttest.IP(sa, da, 58, make([]byte, 8))
				p.b[40] = 130
			} else {
				p.b[20] = 13 // timestamp
			}
		default:
			p.malform = true
			p.b = pkttest.TCP(p.src, p.dst, pkttest.ACK, 1, 1, nil)
			p.b = p.b[:len(p.b)-1-c.n(10)]
		}
	}
	return p
}

// judge is the model's verdict for p, counted.
func (m *engineModel) judge(p *mPacket) Verdict {
	var v Verdict
	if p.dir == in {
		v = m.inbound(p)
	} else {
		v = m.outbound(p)
	}
	if v.Allowed() && p.first {
		k := fragKey{src: p.src.Addr().As16(), dst: p.dst.Addr().As16(), id: p.fragID, proto: p.proto}
		_, slot := m.e.frags.slot(&k)
		m.frags[slot] = mFrag{key: k, seen: m.now}
	}
	m.counts[v]++
	return v
}

// fragFollows: a later fragment passes if the first fragment of its
// datagram passed within fragTimeout (the fragment cache).
func (m *engineModel) fragFollows(p *mPacket) bool {
	k := fragKey{src: p.src.Addr().As16(), dst: p.dst.Addr().As16(), id: p.fragID, proto: p.proto}
	_, slot := m.e.frags.slot(&k)
	f, ok := m.frags[slot]
	if !ok || f.key != k || m.now-f.seen > fragTimeout {
		return false
	}
	m.frags[slot] = mFrag{key: k, seen: m.now}
	return true
}

// timeout is the idle timeout of a flow.
func (m *engineModel) timeout(k mKey, f *mFlow) int64 {
	switch {
	case f.revoked:
		return m.timeouts[toTCPClosing]
	case k.proto == policy.ProtoTCP && f.closing:
		return m.timeouts[toTCPClosing]
	case k.proto == policy.ProtoTCP && !f.answered:
		return m.timeouts[toTCPUnanswered]
	case k.proto == policy.ProtoTCP:
		return m.timeouts[toTCP]
	case k.proto == policy.ProtoUDP:
		return m.timeouts[toUDP]
	}
	return m.timeouts[toICMP]
}

// idle reports whether the flow has been idle for longer than its
// timeout, both counted in the engine's last-seen units (16.8 ms).
func (m *engineModel) idle(k mKey, f *mFlow) bool {
	return age(stamp(m.now), stamp(f.seen)) > timeoutUnits(m.timeout(k, f))
}

// lookup returns the live flow of k; an idle one is forgotten.
func (m *engineModel) lookup(k mKey) (*mFlow, bool) {
	f, ok := m.flows[k]
	if ok && m.idle(k, f) {
		delete(m.flows, k)
		return nil, false
	}
	return f, ok
}

// expire forgets every idle flow (ExpireFlows).
func (m *engineModel) expire() int {
	n := 0
	for k, f := range m.flows {
		if m.idle(k, f) {
			delete(m.flows, k)
			n++
		}
	}
	return n
}

// settle checks a flow against the current table if it was checked
// against an older one: a flow opened under a rule needs the rule (from
// its client to its server), a local container's own flow needs the
// container to be local still. A cut flow becomes a tombstone that answers
// DropRevoked; a tombstone that the table allows again is forgotten
// (ok=false: the packet is untracked).
func (m *engineModel) settle(k mKey, f *mFlow) (v Verdict, ok bool) {
	if f.gen != m.gen {
		f.gen = m.gen
		server := k.lo
		if server == f.client {
			server = k.hi
		}
		var allowed bool
		if f.policy {
			allowed = m.allowed(f.client.Addr(), server.Addr(), k.proto, server.Port())
		} else {
			allowed = m.isLocal(f.client.Addr())
		}
		switch {
		case allowed && f.revoked:
			delete(m.flows, k)
			return 0, false
		case !allowed:
			f.revoked = true
		}
	}
	if f.revoked {
		f.seen = max(f.seen, m.now)
		return DropRevoked, true
	}
	return Accept, true
}

// tracked judges p by its tracked flow, if any, and refreshes the flow.
func (m *engineModel) tracked(p *mPacket) (Verdict, bool) {
	k := keyOf(p.src, p.dst, p.proto)
	f, ok := m.lookup(k)
	if !ok {
		return 0, false
	}
	v, ok := m.settle(k, f)
	if ok && v == Accept {
		if p.proto == policy.ProtoTCP {
			if p.src != f.client {
				f.answered = true
			}
			switch {
			case p.tcp&(pkttest.FIN|pkttest.RST) != 0:
				f.closing = true
			case p.tcp&(pkttest.SYN|pkttest.ACK) == pkttest.SYN:
				f.closing = false
			}
		}
		f.seen = max(f.seen, m.now)
	}
	return v, ok
}

// unseen: p may belong to a flow that began while the engine was not
// looking (a TCP segment other than a first SYN; UDP after
// ResumeTracking).
func (m *engineModel) unseen(p *mPacket) bool {
	switch p.proto {
	case policy.ProtoTCP:
		return p.tcp&(pkttest.SYN|pkttest.ACK) != pkttest.SYN
	case policy.ProtoUDP:
		return m.now < m.unseenUDP
	}
	return false
}

// unseenOpen decides an unseen flow by the rules: its client is the end a
// rule allows as the client (the remote end first when both are).
func (m *engineModel) unseenOpen(p *mPacket, src, dst mEndpoint) (client netip.AddrPort, ruled, ok bool) {
	srcClient := m.pairAllows(src.app, dst.app, p.proto, p.dst.Port())
	dstClient := m.pairAllows(dst.app, src.app, p.proto, p.src.Port())
	clientIsSrc := srcClient && (!src.local || !dstClient)
	if !clientIsSrc && !dstClient {
		return client, false, false
	}
	if clientIsSrc {
		return p.src, dst.local, true
	}
	return p.dst, src.local, true
}

func (m *engineModel) open(p *mPacket, client netip.AddrPort, ruled bool) {
	if m.opened = append(m.opened, [2]netip.AddrPort{p.src, p.dst}); len(m.opened) > 12 {
		m.opened = m.opened[1:]
	}
	m.flows[keyOf(p.src, p.dst, p.proto)] = &mFlow{
		client: client, policy: ruled, gen: m.gen, seen: m.now,
		answered: p.src != client,
		closing:  p.proto == policy.ProtoTCP && p.tcp&pkttest.FIN != 0,
	}
}

func (m *engineModel) inbound(p *mPacket) Verdict {
	if p.malform {
		return DropMalformed
	}
	dst, ok := m.endpoint(p.dst.Addr())
	if !ok || !dst.local {
		return DropUnknownDestination
	}
	switch p.kind {
	case kindICMPError:
		// Passes if it quotes a packet the destination sent in a
		// tracked flow; refreshes nothing.
		if !p.innerOK || p.innerSrc != p.dst.Addr() {
			return DropNoPolicy
		}
		f, ok := m.lookup(p.inner)
		if !ok {
			return DropNoPolicy
		}
		if v, ok := m.settle(p.inner, f); ok {
			return v
		}
		return DropNoPolicy
	case kindFragment:
		if m.fragFollows(p) {
			return Accept
		}
		return DropFragment
	case kindUnsupported, kindICMPOther:
		return DropUnsupported
	}
	if v, ok := m.tracked(p); ok {
		return v
	}
	src, ok := m.endpoint(p.src.Addr())
	if !ok {
		return DropUnknownSource
	}
	if p.proto == policy.ProtoICMP && !p.echoReq {
		return DropNoPolicy
	}
	client, ruled := p.src, true
	if !m.pairAllows(src.app, dst.app, p.proto, p.dst.Port()) {
		if !m.unseen(p) {
			return DropNoPolicy
		}
		if client, ruled, ok = m.unseenOpen(p, src, dst); !ok {
			return DropNoPolicy
		}
	}
	if p.proto == policy.ProtoTCP && p.tcp&pkttest.RST != 0 {
		return Accept // a RST opens nothing
	}
	m.open(p, client, ruled)
	return Accept
}

func (m *engineModel) outbound(p *mPacket) Verdict {
	if p.malform {
		return DropMalformed
	}
	if !m.isLocal(p.src.Addr()) {
		return DropSpoofed
	}
	if d := p.dst.Addr(); d.Is4() && localSubnet.Contains(d) {
		// Hair-pinned: judged as inbound.
		v := m.inbound(p)
		if v == Accept {
			v = AcceptLocal
		}
		return v
	}
	switch p.kind {
	case kindICMPError:
		return Accept
	case kindFragment:
		if m.fragFollows(p) {
			return Accept
		}
		return DropFragment
	case kindUnsupported, kindICMPOther:
		return DropUnsupported
	}
	if v, ok := m.tracked(p); ok {
		if v == DropRevoked && p.proto == policy.ProtoTCP && p.tcp&pkttest.RST != 0 {
			return Accept // the RST that cuts the flow reaches the other end
		}
		return v
	}
	if p.proto == policy.ProtoTCP && p.tcp&pkttest.RST != 0 || p.proto == policy.ProtoICMP && !p.echoReq {
		return Accept // opens nothing
	}
	client, ruled := p.src, false // the local container's own flow
	if m.unseen(p) {
		src, _ := m.endpoint(p.src.Addr())
		dst, ok := m.endpoint(p.dst.Addr())
		if ok {
			client, ruled, ok = m.unseenOpen(p, src, dst)
		}
		if !ok {
			return DropNoPolicy
		}
	}
	m.open(p, client, ruled)
	return Accept
}
