package overlay

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/policy"
)

// Egress: a container's packet to an address outside the overlay never
// enters weft0, so the Go engine never sees it; the kernel forwards it out
// of the cell's underlay interface. weft enforces egress rules where the
// packet is, in the guard's table:
//
//	chain forward { ...
//	  iifname "wc*" oifname != WEFT0 ip daddr != OVERLAY  jump egress
//	  iifname "wc*" oifname != WEFT0                      counter to_cell drop
//	}
//	chain egress {   # one rule per (egress rule, source address, protocol)
//	  ip saddr APP_IP ip daddr A-B meta l4proto tcp th dport P-Q  counter egress_accepted goto egress_accept
//	  ip saddr APP_IP ip daddr A-B meta l4proto icmp icmp type echo-request  counter egress_accepted goto egress_accept
//	  ct state new limit rate 100/second log group 22342 prefix "egress"   # nflog_linux.go
//	  meta l4proto tcp  counter egress  reject with tcp reset
//	  counter egress  reject with icmpx port-unreachable
//	}
//	chain egress_accept {
//	  ct state new limit rate 100/second log group 22342 prefix "egress_accepted"
//	  accept
//	}
//	chain postrouting { type nat hook postrouting priority srcnat
//	  meta nfproto ipv4 ip saddr OVERLAY ip daddr != OVERLAY oifname != WEFT0  masquerade
//	  oifname WEFT0 meta nfproto ipv4 ip saddr != OVERLAY  masquerade   # the cell host's own
//	}
//	chain route_mark { type filter hook prerouting priority filter   # with ingress's mark (guard_linux.go)
//	  ct direction reply ct status snat ip daddr OVERLAY  meta mark set EgressReplyMark
//	}   # + ip rule fwmark EgressReplyMark lookup DELIVERY
//
// Every packet a container sends out is checked, not only a flow's first:
// a rule's removal cuts its open flows on their next packet, as the engine
// does for network policies. Replies come back through the connection
// tracker (NAT needs it; the prerouting notrack applies only to overlay
// destinations) and are not matched here. The egress chain is replaced in
// one transaction with the rest of the table's state untouched.

// Counter names of egress verdicts.
const (
	GuardEgress         = "egress"          // a container's packet to outside the overlay that no egress rule allows
	GuardEgressAccepted = "egress_accepted" // packets that an egress rule allowed
)

const (
	egressChain       = "egress"
	egressAcceptChain = "egress_accept" // logs a flow's first packet (nflog_linux.go), accepts
)

// SyncEgress makes the egress chain allow exactly rules, for the local
// containers of each app in appIPs (rules of policy.EgressAll apply to
// every local container). Rules of apps without local containers allow
// nothing here.
func (o *Overlay) SyncEgress(rules []policy.EgressRule, appIPs map[string][]netip.Addr) error {
	return o.guard.SyncEgress(rules, appIPs)
}

// SyncEgress replaces the egress chain's rules in one transaction.
func (g *guard) SyncEgress(rules []policy.EgressRule, appIPs map[string][]netip.Addr) error {
	exprs := egressExprs(rules, appIPs)
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	_, err = g.readLocked(c)
	if err == nil && reflect.DeepEqual(exprs, g.egress) {
		return nil // the periodic compile: nothing changed
	}
	if err != nil {
		// The table is gone: build it again, with the bindings last written.
		g.egress = exprs
		if err := g.buildLocked(c, g.last); err != nil {
			return err
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: re-install table inet %s: %w", GuardTable, err)
		}
		return nil
	}
	ch := &nftables.Chain{Name: egressChain, Table: g.table}
	c.FlushChain(ch)
	g.addEgressRules(c, ch, exprs)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: update chain %s: %w", egressChain, err)
	}
	g.egress = exprs
	return nil
}

// addEgressRules queues the egress chain's rules, the final drop included.
func (g *guard) addEgressRules(c *nftables.Conn, ch *nftables.Chain, exprs [][]expr.Any) {
	for _, e := range exprs {
		c.AddRule(&nftables.Rule{Table: g.table, Chain: ch, Exprs: e})
	}
	c.AddRule(&nftables.Rule{Table: g.table, Chain: ch, Exprs: egressLog(egressLogRefused)})
	for _, e := range egressRefusal() {
		c.AddRule(&nftables.Rule{Table: g.table, Chain: ch, Exprs: e})
	}
}

// egressLog logs a flow's first packet (ct state new) to EgressLogGroup
// with prefix as the verdict, at most egressLogRate a second; the rule has
// no verdict, so the packet goes on to the next rule either way.
func egressLog(prefix string) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitNEW), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Limit{Type: expr.LimitTypePkts, Rate: egressLogRate, Unit: expr.LimitTimeSecond, Burst: egressLogRate},
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_SNAPLEN,
			Group: EgressLogGroup, Snaplen: egressLogSnap, Data: []byte(prefix)},
	}
}

// egressRefusal is the egress chain's end: a packet no rule allowed is
// counted and refused, so that the container sees "Connection refused" at
// once rather than a hang (as the engine answers denied overlay packets):
// a TCP reset for tcp, an ICMP port unreachable for the rest. The answer
// goes only to the container that sent the packet.
func egressRefusal() [][]expr.Any {
	counter := append(countByVeth(expr.MetaKeyIIFNAME, GuardEgress), &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: GuardEgress})
	return [][]expr.Any{
		slices.Concat([]expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}}},
			counter, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}),
		append(slices.Clone(counter), &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}),
	}
}

// buildEgressLocked queues the egress chain, the jump to it and the NAT
// chain; buildLocked calls it before the forward chain's to_cell drop.
func (g *guard) buildEgressLocked(c *nftables.Conn, t *nftables.Table, fwd, mark *nftables.Chain) {
	ok := c.AddChain(&nftables.Chain{Name: egressAcceptChain, Table: t})
	c.AddRule(&nftables.Rule{Table: t, Chain: ok, Exprs: egressLog(egressLogAccepted)})
	c.AddRule(&nftables.Rule{Table: t, Chain: ok, Exprs: accept()})
	ch := c.AddChain(&nftables.Chain{Name: egressChain, Table: t})
	g.addEgressRules(c, ch, g.egress)
	if g.overlay.IsValid() {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: slices.Concat(fromContainer(),
			g.onIface(expr.MetaKeyOIF, expr.CmpOpNeq),
			nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4),
			inPrefix(16, g.overlay, expr.CmpOpNeq),
			[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: egressChain}})})
		nat := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: slices.Concat(
			nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4),
			inPrefix(12, g.overlay, expr.CmpOpEq),
			inPrefix(16, g.overlay, expr.CmpOpNeq),
			g.onIface(expr.MetaKeyOIF, expr.CmpOpNeq),
			[]expr.Any{&expr.Masq{}})})
		// The cell host's own packets into the overlay leave from weft0's
		// address, the cell's address that the other cells know
		// (engine.HostApp), whatever source they were given (the
		// underlay's, a bound socket's). Packets forwarded from outside
		// never get here: the forward chain refuses them (guard_linux.go).
		c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: slices.Concat(
			g.onIface(expr.MetaKeyOIF, expr.CmpOpEq),
			nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4),
			inPrefix(12, g.overlay, expr.CmpOpNeq),
			[]expr.Any{&expr.Masq{}})})
		// Replies of masqueraded flows are addressed to the container once
		// the kernel has undone the NAT (at dstnat), but the main table
		// routes the overlay into weft0: mark them for the delivery table
		// (the ip rule "fwmark EgressReplyMark", routes_linux.go).
		c.AddRule(&nftables.Rule{Table: t, Chain: mark, Exprs: slices.Concat(
			[]expr.Any{
				&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}}, // IP_CT_DIR_REPLY
				&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
					Mask: binary.NativeEndian.AppendUint32(nil, ipsSrcNAT), Xor: []byte{0, 0, 0, 0}},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
			},
			nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4),
			inPrefix(16, g.overlay, expr.CmpOpEq),
			[]expr.Any{
				&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, EgressReplyMark)},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			})})
	}
}

// EgressReplyMark is the packet mark of replies to containers' egress
// flows; an ip rule sends them to the delivery table.
const EgressReplyMark = 0x5746_0001

const ipsSrcNAT = 1 << 4 // IPS_SRC_NAT of the conntrack status

// egressExprs compiles rules into the egress chain's accept rules, sorted
// so that the same set always gives the same chain.
func egressExprs(rules []policy.EgressRule, appIPs map[string][]netip.Addr) [][]expr.Any {
	rules = slices.Clone(rules)
	slices.SortFunc(rules, func(a, b policy.EgressRule) int {
		return strings.Compare(a.Key(), b.Key())
	})
	var out [][]expr.Any
	for _, r := range rules {
		if !r.Start.Is4() || !r.End.Is4() {
			continue
		}
		srcs := []netip.Addr{{}} // invalid: any local container
		if r.App != policy.EgressAll {
			srcs = slices.Clone(appIPs[r.App])
			slices.SortFunc(srcs, netip.Addr.Compare)
		}
		protos := []policy.Protocol{r.Protocol}
		if r.Protocol == policy.ProtoAll {
			protos = []policy.Protocol{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoICMP}
		}
		for _, src := range srcs {
			if src.IsValid() && !src.Is4() {
				continue
			}
			for _, p := range protos {
				e := []expr.Any{}
				if src.IsValid() {
					e = append(e,
						&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: src.AsSlice()})
				}
				e = append(e,
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
					&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: r.Start.AsSlice(), ToData: r.End.AsSlice()},
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p)}})
				if p == policy.ProtoICMP {
					e = append(e,
						&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}}) // echo request
				} else {
					e = append(e,
						&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
						&expr.Range{Op: expr.CmpOpEq, Register: 1,
							FromData: binary.BigEndian.AppendUint16(nil, r.Ports.Start),
							ToData:   binary.BigEndian.AppendUint16(nil, r.Ports.End)})
				}
				e = append(e,
					&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: GuardEgressAccepted},
					&expr.Verdict{Kind: expr.VerdictGoto, Chain: egressAcceptChain})
				out = append(out, e)
			}
		}
	}
	return out
}

// inPrefix matches the IPv4 address at offset off of the network header
// (12: source, 16: destination) against p (op Eq: inside, Neq: outside).
func inPrefix(off uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
	if p.Bits() == 0 {
		mask = []byte{0, 0, 0, 0}
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}
