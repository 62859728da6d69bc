package engine

import (
	"cmp"
	"encoding/binary"
	"github.com/weft-net/weft/policy"
	"net/netip"
	"slices"
)

// Endpoint registers one container: its overlay IP and the app it runs.
type Endpoint struct {
	IP    netip.Addr
	App   string
	Local bool // true: a container on this cell
}

// HostApp is the app of the cell hosts' own overlay addresses (each cell's
// first address, on weft0) in the registry: a cell host reaches another
// cell's containers through the tunnel from that address. No rule names
// it (no app name may hold '@'); an ingress rule from the cell hosts
// (IngressRule.FromHost) allows HostApp to reach its app.
const HostApp = "@host"

// TableConfig is the input of [Compile].
type TableConfig struct {
	Rules []policy. // kept by the table when sorted (SortRules): not to be modified after Compile
		Rule
	// Endpoints: containers, and the cell hosts' addresses as HostApp
	// (this cell's own Local).
	Endpoints []Endpoint
	// HostRules: the ingress rules whose FromHost is set; the others
	// are skipped (the kernel enforces them, overlay/guard_linux.go).
	HostRules   []policy.IngressRule
	LocalSubnet netip.Prefix // this cell's overlay subnet; a destination in it is hair-pinned
}

// Table is a compiled, immutable snapshot of the rules and the endpoint
// registry. Build it off the packet path with [Compile]; after that it is
// read-only and safe for concurrent use by any number of goroutines.
//
// A new-flow check is two lookups in an open-addressing table of IPv4
// endpoints (a Go map for IPv6), one in an open-addressing table of app
// pairs and a binary search over that pair's merged port ranges; it never
// scans the rules.
type Table struct {
	rules int // distinct valid rules compiled
	// sorted is the rules compiled from, in SortRules order (the caller's
	// slice when it was sorted already: mesh.Policies is), for RuleFor.
	sorted []policy.Rule
	apps   []string // app id -> name; apps[0] is "" (no app)
	ep4    epTable4
	ep6    map[[16]byte]epInfo // IPv6 overlay IP -> app
	pairs  pairTable           // (src app, dst app, proto) -> ports[off:off+n]
	ports  []policy.PortRange  // merged, sorted ranges of all pairs
	// subnet is the local subnet; subnet4/mask4 the same for IPv4 when it
	// is one (mask4 == 0 otherwise: no IPv4 subnet).
	subnet         prefix16
	subnet4, mask4 uint32
	hasSubnet4     bool
}

// epInfo is the registry entry of one IP. App ids are private to one
// Table; 0 marks an empty slot.
type epInfo struct {
	app   uint32
	local bool
}

// portSpan is a pair's merged port ranges, ports[off:off+n], and the first
// of them (most pairs have one range: the verdict then needs no look at
// ports).
type portSpan struct {
	off, n uint32
	first  policy.PortRange
}

// epTable4 maps an IPv4 address to its endpoint: open addressing with
// linear probing over a power-of-two array of slots, at most half full.
// A lookup reads one slot (12 bytes) per probe, key and value together.
type epTable4 struct {
	slots []ep4Slot
	shift uint8
}

type ep4Slot struct {
	ip uint32
	epInfo
}

func newEPTable4(n int) epTable4 {
	c, shift := 8, uint8(64-3)
	for c < 2*n {
		c, shift = c*2, shift-1
	}
	return epTable4{slots: make([]ep4Slot, c), shift: shift}
}

func (t *epTable4) slot(ip uint32) int {
	return int((uint64(ip) * 0x9e3779b97f4a7c15) >> t.shift)
}

func (t *epTable4) put(ip uint32, e epInfo) {
	mask := len(t.slots) - 1
	for i := t.slot(ip); ; i = (i + 1) & mask {
		if s := &t.slots[i]; s.app == 0 || s.ip == ip {
			*s = ep4Slot{ip, e}
			return
		}
	}
}

func (t *epTable4) get(ip uint32) (epInfo, bool) {
	mask := len(t.slots) - 1
	for i := t.slot(ip); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.app == 0 {
			return epInfo{}, false
		}
		if s.ip == ip {
			return s.epInfo, true
		}
	}
}

// pairTable maps a packed (src app, dst app, protocol) to the pair's port
// ranges: open addressing over a power-of-two array of slots (24 bytes,
// key and value together), at most half full.
type pairTable struct {
	slots []pairSlot
	shift uint8
}

type pairSlot struct {
	key uint64 // 0: empty (app ids start at 1)
	portSpan
}

func pairKeyOf(src, dst uint32, proto policy.Protocol) uint64 {
	return uint64(src)<<40 | uint64(dst)<<16 | uint64(proto)
}

func newPairTable(n int) pairTable {
	c, shift := 8, uint8(64-3)
	for c < 2*n {
		c, shift = c*2, shift-1
	}
	return pairTable{slots: make([]pairSlot, c), shift: shift}
}

func (t *pairTable) slot(k uint64) int { return int((k * 0x9e3779b97f4a7c15) >> t.shift) }

func (t *pairTable) put(k uint64, v portSpan) {
	mask := len(t.slots) - 1
	for i := t.slot(k); ; i = (i + 1) & mask {
		if s := &t.slots[i]; s.key == 0 || s.key == k {
			*s = pairSlot{k, v}
			return
		}
	}
}

func (t *pairTable) get(k uint64) (*portSpan, bool) {
	mask := len(t.slots) - 1
	for i := t.slot(k); ; i = (i + 1) & mask {
		s := &t.slots[i]
		switch s.key {
		case k:
			return &s.portSpan, true
		case 0:
			return nil, false
		}
	}
}

// prefix16 is a netip.Prefix over the 16-byte (v4-mapped) address space.
type prefix16 struct {
	addr  [16]byte
	bits  int // -1: no prefix
	bytes int // whole bytes to compare
	mask  byte
}

func newPrefix16(p netip.Prefix) prefix16 {
	if !p.IsValid() {
		return prefix16{bits: -1}
	}
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return prefix16{addr: p.Addr().As16(), bits: bits, bytes: bits / 8, mask: ^byte(0xff >> (bits % 8))}
}

func (p *prefix16) contains(a *[16]byte) bool {
	if p.bits < 0 {
		return false
	}
	for i := 0; i < p.bytes; i++ {
		if a[i] != p.addr[i] {
			return false
		}
	}
	return p.bytes == 16 || a[p.bytes]&p.mask == p.addr[p.bytes]
}

// maxApps bounds the app ids of one table (24 bits in a pair key).
const maxApps = 1<<24 - 1

// Compile builds a Table. Rules that fail [Rule.Validate] and endpoints
// with an invalid IP or app name are skipped (validate at the edge, where
// an error can be reported); duplicate rules count once; when an IP is
// listed twice the later endpoint wins. A rule of protocol all is compiled
// as a tcp and a udp rule with its ports and an icmp rule.
func Compile(cfg TableConfig) *Table {
	t := &Table{
		apps:   []string{""},
		ep6:    make(map[[16]byte]epInfo),
		subnet: newPrefix16(cfg.LocalSubnet),
	}
	if p := cfg.LocalSubnet.Masked(); p.IsValid() && p.Addr().Is4() {
		a := p.Addr().As4()
		t.subnet4, t.hasSubnet4 = binary.BigEndian.Uint32(a[:]), true
		if p.Bits() > 0 {
			t.mask4 = ^uint32(0) << (32 - p.Bits())
		}
	}
	ids := make(map[string]uint32)
	id := func(app string) uint32 {
		n, ok := ids[app]
		if !ok && len(t.apps) < maxApps {
			n = uint32(len(t.apps))
			ids[app] = n
			t.apps = append(t.apps, app)
		}
		return n
	}
	n4 := 0
	for _, ep := range cfg.Endpoints {
		if ep.IP.Unmap().Is4() {
			n4++
		}
	}
	t.ep4 = newEPTable4(n4)
	for _, ep := range cfg.Endpoints {
		if !ep.IP.IsValid() || !policy.ValidAppName(ep.App) && ep.App != HostApp {
			continue
		}
		info := epInfo{app: id(ep.App), local: ep.Local}
		if info.app == 0 {
			continue
		}
		if a := ep.IP.Unmap(); a.Is4() {
			b := a.As4()
			t.ep4.put(binary.BigEndian.Uint32(b[:]), info)
		} else {
			t.ep6[a.As16()] = info
		}
	}

	// Expand the rules into (pair, protocol, ports) items, sort them by
	// pair and start port, and merge the ranges of each pair.
	type item struct {
		k     uint64
		ports policy.PortRange
	}
	items := make([]item, 0, len(cfg.Rules))
	seen := make(map[policy.Rule]struct{}, len(cfg.Rules))
	for _, r := range cfg.Rules {
		if r.Validate() != nil {
			continue
		}
		if _, dup := seen[r]; dup {
			continue
		}
		seen[r] = struct{}{}
		src, dst := id(r.Source), id(r.Destination)
		if src == 0 || dst == 0 {
			continue
		}
		for _, proto := range [...]policy.Protocol{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoICMP} {
			if r.Protocol != proto && r.Protocol != policy.ProtoAll {
				continue
			}
			pr := r.Ports
			if proto == policy.ProtoICMP {
				pr = policy.PortRange{}
			}
			items = append(items, item{pairKeyOf(src, dst, proto), pr})
		}
	}
	for _, r := range cfg.HostRules {
		if !r.FromHost || r.Validate(netip.Prefix{}) != nil {
			continue
		}
		if src, dst := id(HostApp), id(r.App); src != 0 && dst != 0 {
			items = append(items, item{pairKeyOf(src, dst, r.Protocol), r.Ports})
		}
	}
	t.rules = len(seen)
	t.sorted = cfg.Rules
	if !slices.IsSortedFunc(t.sorted, policy.CompareRules) {
		t.sorted = slices.Clone(t.sorted)
		policy.SortRules(t.sorted)
	}
	slices.SortFunc(items, func(a, b item) int {
		return cmp.Or(cmp.Compare(a.k, b.k), cmp.Compare(a.ports.Start, b.ports.Start))
	})
	pairs := 0
	for i := range items {
		if i == 0 || items[i].k != items[i-1].k {
			pairs++
		}
	}
	t.pairs = newPairTable(pairs)
	for i := 0; i < len(items); {
		k := items[i].k
		off := len(t.ports)
		for ; i < len(items) && items[i].k == k; i++ {
			pr := items[i].ports
			if last := len(t.ports) - 1; last >= off && uint32(pr.Start) <= uint32(t.ports[last].End)+1 {
				t.ports[last].End = max(t.ports[last].End, pr.End) // overlapping or adjacent
				continue
			}
			t.ports = append(t.ports, pr)
		}
		t.pairs.put(k, portSpan{off: uint32(off), n: uint32(len(t.ports) - off), first: t.ports[off]})
	}
	return t
}

// RuleFor returns a rule that allows app src to reach app dst over proto
// at port dport (ignored for icmp): the first in SortRules order. It is a
// binary search over the rules, for flow logs and tools, not the packet
// path.
func (t *Table) RuleFor(src, dst string, proto policy.Protocol, dport uint16) (policy.Rule, bool) {
	i, _ := slices.BinarySearchFunc(t.sorted, policy.Rule{Source: src, Destination: dst}, func(r, k policy.Rule) int {
		return cmp.Or(cmp.Compare(r.Source, k.Source), cmp.Compare(r.Destination, k.Destination))
	})
	for ; i < len(t.sorted) && t.sorted[i].Source == src && t.sorted[i].Destination == dst; i++ {
		r := t.sorted[i]
		if (r.Protocol == proto || r.Protocol == policy.ProtoAll) && (!proto.HasPorts() || r.Ports.Contains(dport)) && r.Validate() == nil {
			return r, true
		}
	}
	return policy.Rule{}, false
}

// Rules returns the number of distinct valid rules in the table.
func (t *Table) Rules() int { return t.rules }

// IsLocalSubnet reports whether a is in this cell's overlay subnet.
func (t *Table) IsLocalSubnet(a netip.Addr) bool {
	k := a.Unmap().As16()
	return t.subnet.contains(&k)
}

// Allowed reports whether a new flow from src to dst with the given
// protocol and destination port is allowed: dst must be a local endpoint,
// src a registered endpoint, and a rule must allow the app pair (for icmp
// the port is ignored). It is the check the engine applies to new flows;
// it allocates nothing but is meant for tests and tools.
func (t *Table) Allowed(src, dst netip.Addr, proto policy.Protocol, dport uint16) bool {
	s, d := src.Unmap().As16(), dst.Unmap().As16()
	return t.allowed(&s, &d, proto, dport) == Accept
}

// allowed is the new-flow check. It returns Accept, DropUnknownDestination,
// DropUnknownSource or DropNoPolicy.
func (t *Table) allowed(src, dst *[16]byte, proto policy.Protocol, dport uint16) Verdict {
	de, ok := t.endpoint(dst)
	if !ok || !de.local {
		return DropUnknownDestination
	}
	se, ok := t.endpoint(src)
	if !ok {
		return DropUnknownSource
	}
	if !t.pairAllows(se.app, de.app, proto, dport) {
		return DropNoPolicy
	}
	return Accept
}

// pairAllows reports whether a rule allows app src to reach app dst over
// proto at port dport.
func (t *Table) pairAllows(src, dst uint32, proto policy.Protocol, dport uint16) bool {
	sp, ok := t.pairs.get(pairKeyOf(src, dst, proto))
	return ok && (!proto.HasPorts() || t.portsAllow(sp, dport))
}

// portsAllow reports whether dport is in one of the span's ranges. A span
// of one range, the common case, is decided inline (portsAllow inlines);
// rangesAllow searches the others.
func (t *Table) portsAllow(sp *portSpan, dport uint16) bool {
	if sp.n == 1 {
		return sp.first.Start <= dport && dport <= sp.first.End
	}
	return t.rangesAllow(sp, dport)
}

// rangesAllow is portsAllow for a span of several ranges. Kept out of line,
// so that portsAllow inlines.
//
//go:noinline
func (t *Table) rangesAllow(sp *portSpan, dport uint16) bool {
	rs := t.ports[sp.off : sp.off+sp.n]
	// last range with Start <= dport
	lo, hi := 0, len(rs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if rs[m].Start <= dport {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo > 0 && dport <= rs[lo-1].End
}

// endpoint returns the registry entry of a (v4-mapped for IPv4).
func (t *Table) endpoint(a *[16]byte) (epInfo, bool) {
	if isV4Mapped(a[:]) {
		return t.ep4.get(binary.BigEndian.Uint32(a[12:]))
	}
	e, ok := t.ep6[*a]
	return e, ok
}

// inSubnet reports whether a is in this cell's overlay subnet.
func (t *Table) inSubnet(a *[16]byte, v6 bool) bool {
	if !v6 {
		return t.hasSubnet4 && binary.BigEndian.Uint32(a[12:])&t.mask4 == t.subnet4
	}
	return t.subnet.contains(a)
}

// app returns the name of an app id.
func (t *Table) app(id uint32) string { return t.apps[id] }

// isLocal reports whether a is a registered local endpoint.
func (t *Table) isLocal(a *[16]byte) bool {
	e, ok := t.endpoint(a)
	return ok && e.local
}
