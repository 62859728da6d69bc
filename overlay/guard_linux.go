package overlay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/policy"
)

// The guard is the part of the data path the kernel enforces before a packet
// reaches weft0: an nftables table ("inet weft") that weft owns in the
// cell's network namespace. It binds every container's source address to the
// veth it entered by, as WireGuard binds a peer's source addresses to its
// key, and keeps containers off the cell's own addresses and the underlay:
//
// Below, "wc*" stands for `iifgroup/oifgroup CONTAINERS` (the group
// attach gives every container's veth) and WEFT0 for weft0's index.
//
//	table inet weft {
//	  set containers { type ifname . ipv4_addr }   # host veth . container IP
//	  set drops { ... }  # every counter ... drop also counts under its veth: guard_drops_linux.go
//	  chain prerouting { type filter hook prerouting priority raw
//	    iifname WEFT0  ip daddr != CELL_ADDR            notrack accept   # weft0's .1
//	    iifname "wc*"                                   jump from_container
//	    iifgroup != CONTAINERS iifname "wc*"            jump from_container  # before its first Sync
//	    udp dport WG_PORT                               notrack
//	  }
//	  chain from_container {
//	    meta nfproto != ipv4                            counter not_ipv4 drop
//	    iifname . ip saddr != @containers               counter spoofed  drop
//	    ip daddr OVERLAY ip daddr != CELL_ADDR          notrack accept
//	  }
//	  chain output { type filter hook output priority raw
//	    udp sport WG_PORT                               notrack
//	  }
//	  chain input { type filter hook input priority filter
//	    iifname != "wc*"                                accept
//	    iifname "wc*" ip daddr DNS udp dport 53 accept
//	    iifname "wc*" ip daddr DNS tcp dport 53 accept
//	    iifname "wc*" ct state established,related accept
//	    iifname "wc*"                                   counter to_cell drop
//	  }
//	  chain forward { type filter hook forward priority filter
//	    tcp flags syn tcp option maxseg size set rt mtu  # pmtu_linux.go
//	    iifname "wc*" oifname WEFT0                     accept   # the engine judges these
//	    iifname WEFT0 oifname "wc*"                     accept
//	    ...                                             # ingress: below
//	    iifname "wc*" oifname != WEFT0 ip daddr != OVERLAY jump egress  # egress_linux.go
//	    iifname "wc*" oifname != WEFT0                  counter to_cell drop
//	  }
//	  chain egress { ... }                                # egress_linux.go
//	  chain postrouting { type nat ... masquerade }       # egress_linux.go
//	}
//
// The spoofing check runs at the raw priority, before connection tracking
// and routing, so a packet that lies about its source never creates state
// anywhere. Connection tracking is needed only for the cell's own
// connections to its containers (the input chain lets their replies in);
// overlay forwarding and WireGuard's UDP are exempt from it (notrack), so
// the data path pays for no conntrack lookup. The set is replaced in one
// transaction, so a container never sees a window without its entry.
//
// The table stays when the agent stops: containers outlive the agent, and
// they stay fenced while it is away. A restarted agent keeps the set it
// finds and replaces the rest of the table in one transaction.

// GuardTable is the name of weft's nftables table (family inet).
const GuardTable = "weft"

// Counter names in the table, also the reasons weft reports them under.
const (
	GuardSpoofed = "spoofed"  // IPv4 source is not the container's of that veth
	GuardToCell  = "to_cell"  // a container addressed the cell or the underlay
	GuardNotIPv4 = "not_ipv4" // a container sent a non-IPv4 packet
)

// guardCounters are the named counters of the table.
var guardCounters = []string{GuardSpoofed, GuardToCell, GuardNotIPv4, GuardEgress, GuardEgressAccepted,
	GuardIngress, GuardIngressAccepted}

// containerVethPrefix is what every container's host veth name starts with
// (HostVethName). The rules tell a container's veth by its interface group
// (attach.HostVethGroup: one 4-byte load, where a name is a 16-byte copy);
// raw prerouting also checks a veth with the prefix and without the group.
const containerVethPrefix = "wc"

// GuardEntry binds a container's overlay address to its host-side veth.
type GuardEntry struct {
	Veth string // host-side veth name (HostVethName)
	IP   netip.Addr
}

// GuardCounters are the packets the guard dropped, by reason.
type GuardCounters struct {
	Spoofed uint64
	ToCell  uint64
	NotIPv4 uint64
	// Egress verdicts (egress_linux.go): packets to outside the overlay
	// that no egress rule allowed (dropped), and that one allowed.
	Egress         uint64
	EgressAccepted uint64
	// Ingress verdicts: packets from outside the overlay (a host port,
	// the underlay, the cell host) to a local container that no ingress
	// rule allowed (refused), and that one allowed.
	Ingress         uint64
	IngressAccepted uint64
}

// guard owns the "inet weft" table. Its methods are safe for concurrent use.
type guard struct {
	iface   string
	dns     netip.Addr // the cell's DNS service address (invalid: none)
	wgPort  uint16
	overlay netip.Prefix // the whole overlay (invalid: no egress chain)
	cell    netip.Addr   // weft0's address, the cell's one local address in the overlay (invalid: ask the FIB)
	table   *nftables.Table
	setType nftables.SetDatatype
	ifindex uint32 // weft0's, when the table was last built (0: match by name)

	mu      sync.Mutex
	grouped map[string]bool // guarded by mu: veths of the set given attach.HostVethGroup
	last    []GuardEntry    // guarded by mu: the set as last written, sorted
	egress  [][]expr.Any    // guarded by mu: the egress chain's accept rules as last written

	reinstalled func() // called when Sync found the table gone and built it again; set before use
	// guarded by mu: the ingress chains' accept rules as last written
	ingress, ingressHost [][]expr.Any
}

func newGuard(iface string, dns netip.Addr, wgPort int, overlay netip.Prefix) *guard {
	return &guard{
		iface:   iface,
		overlay: overlay,
		dns:     dns,
		wgPort:  uint16(wgPort),
		table:   &nftables.Table{Family: nftables.TableFamilyINet, Name: GuardTable},
		setType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr),
	}
}

func (g *guard) set() *nftables.Set {
	return &nftables.Set{Table: g.table, Name: "containers", KeyType: g.setType, Concatenation: true}
}

// install replaces the table with weft's current rules in one transaction.
// The set keeps the entries of the table it replaces, so that the
// containers of a restarted agent are not cut off until it syncs.
func (g *guard) install() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	keep, _ := g.readLocked(c) // none if the table is new
	if t, _ := c.ListTableOfFamily(GuardTable, nftables.TableFamilyINet); t != nil {
		c.DelTable(g.table)
	}
	if err := g.buildLocked(c, keep); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: install table inet %s: %w", GuardTable, err)
	}
	g.last = keep
	return nil
}

// buildLocked queues the whole table with entries in the set.
func (g *guard) buildLocked(c *nftables.Conn, entries []GuardEntry) error {
	g.ifindex = 0
	if ifi, err := net.InterfaceByName(g.iface); err == nil {
		g.ifindex = uint32(ifi.Index)
	}
	g.groupLocked(entries)
	t := c.AddTable(g.table)
	for _, name := range guardCounters {
		c.AddObj(&nftables.CounterObj{Table: t, Name: name})
	}
	set := g.set()
	if err := c.AddSet(set, g.elements(entries)); err != nil {
		return fmt.Errorf("nftables: set: %w", err)
	}
	if err := c.AddSet(g.dropsSet(), nil); err != nil { // guard_drops_linux.go
		return fmt.Errorf("nftables: set %s: %w", dropsSetName, err)
	}
	chain := func(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: prio})
	}
	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat(exprs...)})
	}

	// Raw prerouting: the overlay's packets from weft0 first, then every
	// packet of a container through one jump (a rule that fails costs
	// each packet that walks past it). An overlay packet ends the chain at
	// its notrack (accept ends this base chain only).
	pre := chain("prerouting", nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)
	rule(pre, g.onIface(expr.MetaKeyIIF, expr.CmpOpEq), g.notLocalOverlayDst(), notrack(), accept())
	fromCt := c.AddChain(&nftables.Chain{Name: fromContainerChain, Table: t})
	rule(pre, fromContainer(), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: fromCt.Name}})
	// A container veth without the group (before its first Sync): the
	// same checks, found by its name.
	rule(pre, notFromContainer(), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(containerVethPrefix)},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: fromCt.Name},
	})
	rule(fromCt, nfproto(expr.CmpOpNeq, unix.NFPROTO_IPV4), countDrop(GuardNotIPv4))
	rule(fromCt, []expr.Any{
		// iifname . ip saddr: ifname in registers 8-11, saddr in 12.
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 8},
		&expr.Payload{DestRegister: 12, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 8, SetName: set.Name, SetID: set.ID, Invert: true},
	}, countDrop(GuardSpoofed))
	// Only overlay destinations skip conntrack: egress needs it for NAT.
	if g.overlay.IsValid() {
		rule(fromCt, inPrefix(16, g.overlay, expr.CmpOpEq), g.notLocalOverlayDst(), notrack(), accept())
	} else {
		rule(fromCt, notLocalDst(), notrack(), accept())
	}
	if g.wgPort != 0 {
		rule(pre, udpPort(2, g.wgPort), notrack())
		out := chain("output", nftables.ChainHookOutput, nftables.ChainPriorityRaw)
		rule(out, udpPort(0, g.wgPort), notrack())
	}

	in := chain("input", nftables.ChainHookInput, nftables.ChainPriorityFilter)
	rule(in, notFromContainer(), accept()) // every rule below is about containers
	if g.dns.Is4() {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			rule(in, fromContainer(), []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: g.dns.AsSlice()},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 53}},
			}, accept())
		}
	}
	rule(in, fromContainer(), []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
			Xor:  []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}, accept())
	rule(in, fromContainer(), countDrop(GuardToCell))

	fwd := chain("forward", nftables.ChainHookForward, nftables.ChainPriorityFilter)
	rule(fwd, mssClamp()) // pmtu_linux.go
	// Between a container and weft0, both ways, nothing below applies
	// (the engine judges these packets): accept before the ingress and
	// egress rules, which every packet would otherwise walk.
	rule(fwd, fromContainer(), g.onIface(expr.MetaKeyOIF, expr.CmpOpEq), accept())
	rule(fwd, g.onIface(expr.MetaKeyIIF, expr.CmpOpEq), toContainer(), accept())
	var mark *nftables.Chain
	if g.overlay.IsValid() {
		// One prerouting chain at filter priority (after DNAT) for the
		// marks that route to the delivery table: a base chain costs
		// every packet a hook call.
		mark = chain(markChain, nftables.ChainHookPrerouting, nftables.ChainPriorityFilter)
		g.buildIngressLocked(c, t, fwd, mark)
	}
	g.buildEgressLocked(c, t, fwd, mark)
	rule(fwd, fromContainer(), g.onIface(expr.MetaKeyOIF, expr.CmpOpNeq), countDrop(GuardToCell))
	return nil
}

// Ingress: a packet from outside the overlay to a local container (a host
// port that portmap DNATs, a router on the underlay, the cell host) passes
// only when an ingress rule of the container's app allows it:
//
//	chain route_mark { type filter hook prerouting priority filter   # after DNAT
//	  iifname != "wc*" iifname != WEFT0 ip daddr OVERLAY  meta mark set EgressReplyMark
//	}   # the ip rule "fwmark EgressReplyMark lookup DELIVERY" sends it to the veth
//	chain forward { ...
//	  iifname "wc*" oifname != WEFT0 ct direction reply        accept   # a container answers
//	  oifname "wc*" iifname != WEFT0                            jump ingress
//	  oifname WEFT0 iifname != WEFT0 iifname != "wc*"  counter ingress reject  # to another cell's containers
//	}
//	chain ingress {   # one rule per (ingress rule with a source range, container)
//	  ct direction reply accept ; ct state related accept
//	  icmp type { destination-unreachable, time-exceeded } accept
//	  ip daddr APP_IP ip saddr A-B meta l4proto tcp th dport P-Q  counter ingress_accepted accept
//	  meta l4proto tcp counter ingress reject with tcp reset
//	  counter ingress reject with icmpx port-unreachable
//	}
//	chain output { type filter hook output priority filter
//	  oifname "wc*" jump ingress_host
//	}
//	chain ingress_host { ... the same, for the --from-host rules, without saddr }
//
// Every packet of the opening side is checked, so removing a rule cuts its
// open flows on their next packet; the container's answers pass by
// connection state.

// Counter names of ingress verdicts.
const (
	GuardIngress         = "ingress"          // a packet from outside the overlay to a container that no ingress rule allows
	GuardIngressAccepted = "ingress_accepted" // packets that an ingress rule allowed
)

const (
	ingressChain       = "ingress"
	ingressHostChain   = "ingress_host"
	markChain          = "route_mark"     // the delivery-table marks of ingress and of egress replies
	fromContainerChain = "from_container" // raw prerouting's checks of a container's packets
)

// SyncIngress makes the ingress chains allow exactly rules, for the
// local containers of each app in appIPs.
func (o *Overlay) SyncIngress(rules []policy.IngressRule, appIPs map[string][]netip.Addr) error {
	return o.guard.SyncIngress(rules, appIPs)
}

// SyncIngress replaces the ingress chains' rules in one transaction.
func (g *guard) SyncIngress(rules []policy.IngressRule, appIPs map[string][]netip.Addr) error {
	fwd, host := ingressExprs(rules, appIPs)
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	_, err = g.readLocked(c)
	if err == nil && reflect.DeepEqual(fwd, g.ingress) && reflect.DeepEqual(host, g.ingressHost) {
		return nil
	}
	g.ingress, g.ingressHost = fwd, host
	if err != nil {
		if err := g.buildLocked(c, g.last); err != nil {
			return err
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: re-install table inet %s: %w", GuardTable, err)
		}
		return nil
	}
	for name, exprs := range map[string][][]expr.Any{ingressChain: fwd, ingressHostChain: host} {
		ch := &nftables.Chain{Name: name, Table: g.table}
		c.FlushChain(ch)
		g.addIngressRules(c, ch, exprs)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: update ingress chains: %w", err)
	}
	return nil
}

// buildIngressLocked queues the ingress chains, the jumps to them and, in
// mark, the mark that routes packets from outside the overlay to the
// delivery table; buildLocked calls it, with an overlay, before the egress
// jump.
func (g *guard) buildIngressLocked(c *nftables.Conn, t *nftables.Table, fwd, mark *nftables.Chain) {
	in := c.AddChain(&nftables.Chain{Name: ingressChain, Table: t})
	g.addIngressRules(c, in, g.ingress)
	host := c.AddChain(&nftables.Chain{Name: ingressHostChain, Table: t})
	g.addIngressRules(c, host, g.ingressHost)

	c.AddRule(&nftables.Rule{Table: t, Chain: mark, Exprs: slices.Concat(
		notFromContainer(),
		g.onIface(expr.MetaKeyIIF, expr.CmpOpNeq),
		nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4),
		inPrefix(16, g.overlay, expr.CmpOpEq),
		[]expr.Any{
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, EgressReplyMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		})})

	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: slices.Concat(fromContainer(),
		g.onIface(expr.MetaKeyOIF, expr.CmpOpNeq), ctReply(), accept())})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: slices.Concat(toContainer(),
		g.onIface(expr.MetaKeyIIF, expr.CmpOpNeq), nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: ingressChain}})})
	// From outside the overlay to a container of another cell (a router
	// on the underlay routing the overlay to this cell): no ingress rule
	// of this cell can allow it (the container's own cell judges ingress),
	// and the engine would count it as spoofed.
	for _, e := range ingressRefusal(false) {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: slices.Concat(notFromContainer(),
			g.onIface(expr.MetaKeyIIF, expr.CmpOpNeq), g.onIface(expr.MetaKeyOIF, expr.CmpOpEq), e)})
	}
	out := c.AddChain(&nftables.Chain{Name: "output_ingress", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: slices.Concat(toContainer(), nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: ingressHostChain}})})
}

// addIngressRules queues an ingress chain: replies and related packets
// pass, then the rules, then the refusal.
func (g *guard) addIngressRules(c *nftables.Conn, ch *nftables.Chain, exprs [][]expr.Any) {
	add := func(e []expr.Any) { c.AddRule(&nftables.Rule{Table: g.table, Chain: ch, Exprs: e}) }
	add(slices.Concat(ctReply(), accept()))
	add(slices.Concat([]expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}, accept()))
	// ICMP errors about what the container sent: "fragmentation needed"
	// from the cell's own route MTU (path MTU, pmtu_linux.go) and the
	// like. Overlay forwarding is untracked, so they are not "related";
	// an error opens nothing.
	for _, typ := range []byte{3, 11} { // destination unreachable, time exceeded
		add(slices.Concat([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}},
		}, accept()))
	}
	for _, e := range exprs {
		add(e)
	}
	for _, e := range ingressRefusal(true) {
		add(e)
	}
}

// ingressRefusal counts a packet as ingress and refuses it: a TCP reset
// for tcp, an ICMP port unreachable for the rest. byVeth also counts it
// under the receiving container's veth (the drops set).
func ingressRefusal(byVeth bool) [][]expr.Any {
	counter := []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: GuardIngress}}
	if byVeth {
		counter = append(countByVeth(expr.MetaKeyOIFNAME, GuardIngress), counter...)
	}
	return [][]expr.Any{
		slices.Concat([]expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}}},
			counter, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}),
		append(slices.Clone(counter), &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}),
	}
}

// ingressExprs compiles rules into the accept rules of the ingress chain
// (source ranges) and of the ingress_host chain (FromHost), sorted so that
// the same set always gives the same chains.
func ingressExprs(rules []policy.IngressRule, appIPs map[string][]netip.Addr) (fwd, host [][]expr.Any) {
	rules = slices.Clone(rules)
	slices.SortFunc(rules, func(a, b policy.IngressRule) int { return strings.Compare(a.Key(), b.Key()) })
	for _, r := range rules {
		dsts := slices.Clone(appIPs[r.App])
		slices.SortFunc(dsts, netip.Addr.Compare)
		for _, dst := range dsts {
			if !dst.Is4() {
				continue
			}
			e := []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dst.AsSlice()},
			}
			if !r.FromHost {
				e = append(e,
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
					&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: r.Start.AsSlice(), ToData: r.End.AsSlice()})
			}
			e = append(e,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(r.Protocol)}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Range{Op: expr.CmpOpEq, Register: 1,
					FromData: binary.BigEndian.AppendUint16(nil, r.Ports.Start),
					ToData:   binary.BigEndian.AppendUint16(nil, r.Ports.End)},
				&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: GuardIngressAccepted},
				&expr.Verdict{Kind: expr.VerdictAccept})
			if r.FromHost {
				host = append(host, e)
			} else {
				fwd = append(fwd, e)
			}
		}
	}
	return fwd, host
}

// Sync makes the set of (veth, address) bindings equal to want. It writes
// only when want differs from what the kernel has, and re-installs the
// whole table if it is gone (an operator's `nft flush ruleset`). It returns
// whether it changed anything.
func (g *guard) Sync(want []GuardEntry) (changed bool, err error) {
	want = sortEntries(want)
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	have, err := g.readLocked(c)
	if err != nil {
		// The table or its set is gone: build it again.
		if err := g.buildLocked(c, want); err != nil {
			return false, err
		}
		if err := c.Flush(); err != nil {
			return false, fmt.Errorf("nftables: re-install table inet %s: %w", GuardTable, err)
		}
		g.last = want
		if g.reinstalled != nil {
			g.reinstalled() // drift repair (drift_linux.go) counts it
		}
		return true, nil
	}
	g.groupLocked(want)
	if slices.Equal(have, want) {
		g.last = want
		return false, nil
	}
	set := g.set()
	c.FlushSet(set)
	if len(want) > 0 {
		if err := c.SetAddElements(set, g.elements(want)); err != nil {
			return false, fmt.Errorf("nftables: set elements: %w", err)
		}
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("nftables: update set containers: %w", err)
	}
	g.last = want
	return true, nil
}

// Entries returns the bindings the kernel holds, sorted.
func (g *guard) Entries() ([]GuardEntry, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	return g.readLocked(c)
}

func (g *guard) readLocked(c *nftables.Conn) ([]GuardEntry, error) {
	set, err := c.GetSetByName(g.table, "containers")
	if err != nil {
		return nil, err
	}
	els, err := c.GetSetElements(set)
	if err != nil {
		return nil, err
	}
	out := make([]GuardEntry, 0, len(els))
	for _, e := range els {
		if len(e.Key) < unix.IFNAMSIZ+4 {
			continue
		}
		name := string(bytes.TrimRight(e.Key[:unix.IFNAMSIZ], "\x00"))
		ip, _ := netip.AddrFromSlice(e.Key[unix.IFNAMSIZ : unix.IFNAMSIZ+4])
		out = append(out, GuardEntry{Veth: name, IP: ip})
	}
	return sortEntries(out), nil
}

// Counters reads the guard's drop counters from the kernel.
func (g *guard) Counters() (GuardCounters, error) {
	c, err := nftables.New()
	if err != nil {
		return GuardCounters{}, err
	}
	objs, err := c.GetObjects(g.table)
	if err != nil {
		return GuardCounters{}, err
	}
	var out GuardCounters
	for _, o := range objs {
		co, ok := o.(*nftables.CounterObj)
		if !ok {
			continue
		}
		switch co.Name {
		case GuardSpoofed:
			out.Spoofed = co.Packets
		case GuardToCell:
			out.ToCell = co.Packets
		case GuardNotIPv4:
			out.NotIPv4 = co.Packets
		case GuardEgress:
			out.Egress = co.Packets
		case GuardEgressAccepted:
			out.EgressAccepted = co.Packets
		case GuardIngress:
			out.Ingress = co.Packets
		case GuardIngressAccepted:
			out.IngressAccepted = co.Packets
		}
	}
	return out, nil
}

func (g *guard) elements(entries []GuardEntry) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(entries))
	for _, e := range entries {
		if !e.IP.Is4() || len(e.Veth) == 0 || len(e.Veth) >= unix.IFNAMSIZ {
			continue
		}
		key := make([]byte, unix.IFNAMSIZ, unix.IFNAMSIZ+4)
		copy(key, e.Veth)
		key = append(key, e.IP.AsSlice()...)
		out = append(out, nftables.SetElement{Key: key})
	}
	return out
}

func sortEntries(es []GuardEntry) []GuardEntry {
	es = slices.Clone(es)
	slices.SortFunc(es, func(a, b GuardEntry) int {
		if a.Veth != b.Veth {
			if a.Veth < b.Veth {
				return -1
			}
			return 1
		}
		return a.IP.Compare(b.IP)
	})
	return slices.Compact(es)
}

// Expression helpers. Register 1 is scratch; the concatenation above uses
// 8-12.

func fromContainer() []expr.Any    { return ifGroup(expr.MetaKeyIIFGROUP, expr.CmpOpEq) }
func notFromContainer() []expr.Any { return ifGroup(expr.MetaKeyIIFGROUP, expr.CmpOpNeq) }
func toContainer() []expr.Any      { return ifGroup(expr.MetaKeyOIFGROUP, expr.CmpOpEq) }

// ifGroup compares the input or output interface's group with the group
// of containers' veths.
func ifGroup(key expr.MetaKey, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, attach.HostVethGroup)},
	}
}

// onIface compares the input (MetaKeyIIF) or output interface with weft0:
// by index, or by name if weft0 had none when the table was built.
func (g *guard) onIface(key expr.MetaKey, op expr.CmpOp) []expr.Any {
	if g.ifindex == 0 {
		if key == expr.MetaKeyIIF {
			return ifname(expr.MetaKeyIIFNAME, op, g.iface)
		}
		return ifname(expr.MetaKeyOIFNAME, op, g.iface)
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, g.ifindex)},
	}
}

// groupLocked gives the veths of entries the containers' interface group
// (attach gives it to new ones; this covers veths of an older agent, and
// any whose group was changed) and forgets veths no longer in entries.
// A veth that is gone is skipped: its entry will go too.
func (g *guard) groupLocked(entries []GuardEntry) {
	grouped := make(map[string]bool, len(entries))
	for _, e := range entries {
		if g.grouped[e.Veth] {
			grouped[e.Veth] = true
			continue
		}
		l, err := netlink.LinkByName(e.Veth)
		if err != nil {
			continue
		}
		if uint32(l.Attrs().Group) != attach.HostVethGroup {
			if err := netlink.LinkSetGroup(l, int(attach.HostVethGroup)); err != nil {
				continue
			}
		}
		grouped[e.Veth] = true
	}
	g.grouped = grouped
}

// ctReply: the packet goes in the reply direction of its connection.
func ctReply() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}}, // IP_CT_DIR_REPLY
	}
}

func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: append([]byte(name), 0)},
	}
}

func nfproto(op expr.CmpOp, proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte{proto}},
	}
}

// notLocalOverlayDst matches an IPv4 packet to an overlay address that is
// not the cell's own: the packets from weft0 (the engine let through only
// those to a local container or the cell) and those of containers to the
// overlay. In the overlay the cell's one local address is weft0's, so a
// comparison does what notLocalDst's route lookup (a FIB lookup through
// the policy rules, per packet) does. Without the cell's address,
// notLocalDst.
func (g *guard) notLocalOverlayDst() []expr.Any {
	if !g.cell.Is4() {
		return notLocalDst()
	}
	return slices.Concat(nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: g.cell.AsSlice()},
	})
}

// notLocalDst: the destination is not an address of this cell.
func notLocalDst() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
	}
}

// udpPort matches UDP with the port at offset off of the UDP header (0:
// source, 2: destination).
func udpPort(off uint32, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// countDrop counts a container's packet under counter, and under its veth
// (guard_drops_linux.go), and drops it.
func countDrop(counter string) []expr.Any {
	return append(countByVeth(expr.MetaKeyIIFNAME, counter),
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counter},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

func notrack() []expr.Any { return []expr.Any{&expr.Notrack{}} }
