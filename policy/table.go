package policy

import (
	"net/netip"
	"slices"
)

// Endpoint registers one container: its overlay IP and the app it runs.
type Endpoint struct {
	IP    netip.Addr
	App   string
	Local bool // true: a container on this cell
}

// TableConfig is the input of [Compile].
type TableConfig struct {
	Rules       []Rule
	Endpoints   []Endpoint
	LocalSubnet netip.Prefix // this cell's overlay subnet; a destination in it is hair-pinned
}

// Table is a compiled, immutable snapshot of the rules and the endpoint
// registry. Build it off the packet path with [Compile]; after that it is
// read-only and safe for concurrent use by any number of goroutines.
//
// A new-flow check is three map lookups (source endpoint, destination
// endpoint, app pair) and a binary search over that pair's merged port
// ranges; it never scans the rules.
type Table struct {
	rules     int                  // distinct valid rules compiled
	endpoints map[[16]byte]epInfo  // overlay IP (v4-mapped) -> app
	pairs     map[pairKey]portSpan // (src app, dst app, proto) -> ports[off:off+n]
	ports     []PortRange          // merged, sorted ranges of all pairs
	subnet    prefix16
}

// epInfo is the registry entry of one IP. App ids are private to one Table.
type epInfo struct {
	app   uint32
	local bool
}

type pairKey struct {
	src, dst uint32 // app ids
	proto    uint32
}

type portSpan struct{ off, n uint32 }

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

// Compile builds a Table. Rules that fail [Rule.Validate] and endpoints
// with an invalid IP or app name are skipped (validate at the edge, where
// an error can be reported); duplicate rules count once; when an IP is
// listed twice the later endpoint wins.
func Compile(cfg TableConfig) *Table {
	t := &Table{
		endpoints: make(map[[16]byte]epInfo, len(cfg.Endpoints)),
		pairs:     make(map[pairKey]portSpan),
		subnet:    newPrefix16(cfg.LocalSubnet),
	}
	ids := make(map[string]uint32)
	id := func(app string) uint32 {
		n, ok := ids[app]
		if !ok {
			n = uint32(len(ids) + 1) // 0 is "no app"
			ids[app] = n
		}
		return n
	}
	for _, ep := range cfg.Endpoints {
		if !ep.IP.IsValid() || !validAppName(ep.App) {
			continue
		}
		t.endpoints[ep.IP.Unmap().As16()] = epInfo{app: id(ep.App), local: ep.Local}
	}

	rules := make([]Rule, 0, len(cfg.Rules))
	for _, r := range cfg.Rules {
		if r.Validate() == nil {
			rules = append(rules, r)
		}
	}
	SortRules(rules)
	rules = slices.Compact(rules)
	t.rules = len(rules)

	// Rules sorted by (src, dst, proto, ports) arrive grouped by pair.
	for i := 0; i < len(rules); {
		r := rules[i]
		k := pairKey{src: id(r.Source), dst: id(r.Destination), proto: uint32(r.Protocol)}
		off := len(t.ports)
		for ; i < len(rules) && rules[i].Source == r.Source &&
			rules[i].Destination == r.Destination && rules[i].Protocol == r.Protocol; i++ {
			pr := rules[i].Ports
			if last := len(t.ports) - 1; last >= off && uint32(pr.Start) <= uint32(t.ports[last].End)+1 {
				t.ports[last].End = max(t.ports[last].End, pr.End) // overlapping or adjacent
				continue
			}
			t.ports = append(t.ports, pr)
		}
		t.pairs[k] = portSpan{off: uint32(off), n: uint32(len(t.ports) - off)}
	}
	return t
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
func (t *Table) Allowed(src, dst netip.Addr, proto Protocol, dport uint16) bool {
	s, d := src.Unmap().As16(), dst.Unmap().As16()
	return t.allowed(&s, &d, proto, dport) == Accept
}

// allowed is the new-flow check. It returns Accept, DropUnknownDestination,
// DropUnknownSource or DropNoPolicy.
func (t *Table) allowed(src, dst *[16]byte, proto Protocol, dport uint16) Verdict {
	de, ok := t.endpoints[*dst]
	if !ok || !de.local {
		return DropUnknownDestination
	}
	se, ok := t.endpoints[*src]
	if !ok {
		return DropUnknownSource
	}
	if !t.pairAllows(se.app, de.app, proto, dport) {
		return DropNoPolicy
	}
	return Accept
}

func (t *Table) pairAllows(src, dst uint32, proto Protocol, dport uint16) bool {
	sp, ok := t.pairs[pairKey{src: src, dst: dst, proto: uint32(proto)}]
	if !ok {
		return false
	}
	if !proto.hasPorts() {
		return true
	}
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

// isLocal reports whether a is a registered local endpoint.
func (t *Table) isLocal(a *[16]byte) bool {
	e, ok := t.endpoints[*a]
	return ok && e.local
}
