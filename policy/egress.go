package policy

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Egress rules let containers reach addresses outside the overlay (through
// NAT on their cell), in the spirit of Cloud Foundry's application security
// groups: an app (or every app) may open flows to a destination range with
// a protocol and, for tcp, udp and all, a destination port range. Like app
// rules they are allow-only and default deny; replies of an allowed flow
// pass without a rule. Overlay addresses are never egress: a range that
// overlaps the overlay allows only its part outside it, and a range inside
// the overlay is an error.

// EgressAll is the App of an egress rule that applies to every app.
const EgressAll = "*"

// EgressRule allows the containers of App (or of every app, EgressAll) to
// open flows to the IPv4 addresses Start-End (inclusive) with Protocol and,
// for tcp, udp and all, a destination port in Ports.
type EgressRule struct {
	App        string
	Start, End netip.Addr // inclusive IPv4 range
	Protocol   Protocol
	Ports      PortRange // zero for icmp
}

// ParseDestination parses an egress destination: a CIDR ("10.0.11.0/24"),
// a range ("10.0.11.1-10.0.11.9") or one address ("10.0.11.1"), IPv4 only.
// A CIDR with host bits set is an error that names the network it means.
func ParseDestination(s string) (start, end netip.Addr, err error) {
	bad := func(why string) (netip.Addr, netip.Addr, error) {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("invalid destination %s: %s", Quote(s), why)
	}
	if lo, hi, ok := strings.Cut(s, "-"); ok {
		a, err1 := netip.ParseAddr(strings.TrimSpace(lo))
		b, err2 := netip.ParseAddr(strings.TrimSpace(hi))
		switch {
		case err1 != nil || err2 != nil:
			return bad("want a CIDR (10.0.0.0/24), a range (10.0.0.1-10.0.0.9) or an address")
		case !a.Is4() || !b.Is4():
			return bad("only IPv4 addresses are supported")
		case a.Compare(b) > 0:
			return bad(fmt.Sprintf("start %v is greater than end %v", a, b))
		}
		return a, b, nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return bad("want a CIDR (10.0.0.0/24), a range (10.0.0.1-10.0.0.9) or an address")
		}
		if !p.Addr().Is4() {
			return bad("only IPv4 addresses are supported")
		}
		if p.Masked() != p {
			return bad(fmt.Sprintf("host bits are set; the network is %v", p.Masked()))
		}
		return p.Addr(), lastAddr(p), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return bad("want a CIDR (10.0.0.0/24), a range (10.0.0.1-10.0.0.9) or an address")
	}
	if !a.Is4() {
		return bad("only IPv4 addresses are supported")
	}
	return a, a, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(b)
}

// ParseEgressRule builds a rule from the command line's or a file's
// strings. ports may be empty: tcp, udp and all then cover 1-65535. The
// rule is validated against the overlay prefix; errors name the rule.
func ParseEgressRule(app, destination, protocol, ports string, overlay netip.Prefix) (EgressRule, error) {
	name := fmt.Sprintf("egress rule %s -> %s %s", clipApp(app), Quote(destination), Quote(protocol))
	if ports != "" {
		name += " " + Quote(ports)
	}
	fail := func(err error) (EgressRule, error) { return EgressRule{}, fmt.Errorf("%s: %w", name, err) }
	var r EgressRule
	r.App = app
	var err error
	if r.Start, r.End, err = ParseDestination(destination); err != nil {
		return fail(err)
	}
	if r.Protocol, err = ParseProtocol(protocol); err != nil {
		return fail(err)
	}
	switch {
	case ports != "" && !r.Protocol.HasPorts():
		return fail(fmt.Errorf("icmp rules take no ports"))
	case ports != "":
		if r.Ports, err = ParsePorts(ports); err != nil {
			return fail(err)
		}
	case r.Protocol.HasPorts():
		r.Ports = PortRange{1, 65535}
	}
	if err := r.Validate(overlay); err != nil {
		return fail(err)
	}
	return r, nil
}

func clipApp(app string) string {
	if app == EgressAll {
		return "(all apps)"
	}
	return Quote(app)
}

// Validate checks the app name (or EgressAll), the range (IPv4, start <=
// end, not inside overlay), the protocol and the ports as Rule.Validate
// does. An invalid overlay prefix skips the overlay check.
func (r EgressRule) Validate(overlay netip.Prefix) error {
	if r.App != EgressAll && !validAppName(r.App) {
		return fmt.Errorf("invalid app %s: must be 1-%d characters from A-Z a-z 0-9 . _ - (or --all)", Quote(r.App), maxAppName)
	}
	if !r.Start.Is4() || !r.End.Is4() {
		return fmt.Errorf("invalid destination %v-%v: only IPv4 addresses are supported", r.Start, r.End)
	}
	if r.Start.Compare(r.End) > 0 {
		return fmt.Errorf("invalid destination %v-%v: start is greater than end", r.Start, r.End)
	}
	if overlay.IsValid() && overlay.Contains(r.Start) && overlay.Contains(r.End) {
		return fmt.Errorf("invalid destination %s: it is inside the overlay %v, and overlay addresses are never egress (use add-policy)", r.Destination(), overlay)
	}
	// The port checks are Rule's.
	return Rule{Source: "x", Destination: "x", Protocol: r.Protocol, Ports: r.Ports}.Validate()
}

// Warnings returns what an operator should know before adding the rule:
// that it allows every address, or that its overlap with the overlay
// allows nothing there.
func (r EgressRule) Warnings(overlay netip.Prefix) []string {
	var w []string
	if r.Start == netip.AddrFrom4([4]byte{}) && r.End == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		w = append(w, fmt.Sprintf("%s: 0.0.0.0/0 allows every address outside the overlay, private networks included", r))
	}
	if overlay.IsValid() && r.Start.Compare(lastAddr(overlay)) <= 0 && r.End.Compare(overlay.Masked().Addr()) >= 0 {
		w = append(w, fmt.Sprintf("%s: the part inside the overlay %v is not egress and stays governed by network policies", r, overlay))
	}
	return w
}

// Destination returns the range as a CIDR when it is exactly one, as an
// address when it is one address, else as start-end.
func (r EgressRule) Destination() string {
	if r.Start == r.End {
		return r.Start.String()
	}
	for bits := 0; bits <= 32; bits++ {
		p := netip.PrefixFrom(r.Start, bits)
		if p.Masked().Addr() == r.Start && lastAddr(p) == r.End {
			return p.String()
		}
	}
	return r.Start.String() + "-" + r.End.String()
}

// Key returns a canonical string unique per rule, e.g.
// "egress:appA>10.0.11.0-10.0.11.255/tcp/80-80" ("*" for every app). It
// cannot collide with an app rule's key, whose source has no ':'.
func (r EgressRule) Key() string {
	return "egress:" + r.App + ">" + r.Start.String() + "-" + r.End.String() + "/" +
		r.Protocol.String() + "/" + strconv.Itoa(int(r.Ports.Start)) + "-" + strconv.Itoa(int(r.Ports.End))
}

// String returns e.g. "appA -> 10.0.11.0/24 tcp 80" or "(all apps) ->
// 0.0.0.0/0 all 1-65535".
func (r EgressRule) String() string {
	app := r.App
	if app == EgressAll {
		app = "(all apps)"
	}
	s := app + " -> " + r.Destination() + " " + r.Protocol.String()
	if r.Protocol.HasPorts() || r.Ports != (PortRange{}) {
		s += " " + r.Ports.String()
	}
	return s
}

// SortEgressRules sorts rules by app, destination, protocol and ports.
func SortEgressRules(rules []EgressRule) { slices.SortFunc(rules, compareEgress) }

func compareEgress(a, b EgressRule) int {
	return cmp.Or(
		cmp.Compare(a.App, b.App),
		a.Start.Compare(b.Start),
		a.End.Compare(b.End),
		cmp.Compare(a.Protocol, b.Protocol),
		cmp.Compare(a.Ports.Start, b.Ports.Start),
		cmp.Compare(a.Ports.End, b.Ports.End),
	)
}

// CheckEgressRules validates a whole set: every rule, and no two distinct
// rules of the same app whose ranges, protocols and ports overlap (one
// would hide the other's removal). It returns the set sorted with exact
// duplicates merged; on error the caller keeps its old set.
func CheckEgressRules(rules []EgressRule, overlay netip.Prefix) ([]EgressRule, error) {
	rules = slices.Clone(rules)
	slices.SortFunc(rules, compareEgress)
	rules = slices.Compact(rules)
	for i, r := range rules {
		if err := r.Validate(overlay); err != nil {
			return nil, fmt.Errorf("egress rule %s: %w", r, err)
		}
		for _, o := range rules[i+1:] {
			if o.App != r.App {
				break
			}
			if overlapsEgress(r, o) {
				return nil, fmt.Errorf("egress rule %s overlaps egress rule %s: merge them into one", r, o)
			}
		}
	}
	return rules, nil
}

func overlapsEgress(a, b EgressRule) bool {
	if a.Start.Compare(b.End) > 0 || b.Start.Compare(a.End) > 0 {
		return false
	}
	if a.Protocol != b.Protocol && a.Protocol != ProtoAll && b.Protocol != ProtoAll {
		return false
	}
	if !a.Protocol.HasPorts() || !b.Protocol.HasPorts() {
		return true // icmp meets icmp, or icmp meets all
	}
	return a.Ports.Start <= b.Ports.End && b.Ports.Start <= a.Ports.End
}

// PublicEgress is the rule set of `weft init --egress public`: every app may
// reach every public IPv4 address with any protocol, and no private range
// (10/8, 172.16/12, 192.168/16) nor the link-local 169.254/16, as Cloud
// Foundry's default "public_networks" security group does.
func PublicEgress() []EgressRule {
	ranges := [][2]string{
		{"0.0.0.0", "9.255.255.255"},
		{"11.0.0.0", "169.253.255.255"},
		{"169.255.0.0", "172.15.255.255"},
		{"172.32.0.0", "192.167.255.255"},
		{"192.169.0.0", "255.255.255.255"},
	}
	out := make([]EgressRule, 0, len(ranges))
	for _, rg := range ranges {
		out = append(out, EgressRule{App: EgressAll, Start: netip.MustParseAddr(rg[0]), End: netip.MustParseAddr(rg[1]),
			Protocol: ProtoAll, Ports: PortRange{1, 65535}})
	}
	return out
}

// ParseASG reads a Cloud Foundry security group's rules, e.g.
//
//	[{"protocol":"tcp","destination":"10.0.11.0/24","ports":"80,443"}]
//
// into egress rules for app (EgressAll for every app). "destination" and
// "ports" may list several values separated by commas; "description" and
// "log" are accepted and ignored, "type" and "code" (icmp) only as -1 (any);
// other fields are errors. Errors name the file and the entry.
func ParseASG(name, app string, data []byte, overlay netip.Prefix) ([]EgressRule, error) {
	type asgRule struct {
		Protocol    string `json:"protocol"`
		Destination string `json:"destination"`
		Ports       string `json:"ports"`
		Type        *int   `json:"type"`
		Code        *int   `json:"code"`
		Description string `json:"description"`
		Log         bool   `json:"log"`
	}
	var in []asgRule
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: data after the list of rules", name)
	}
	if in == nil {
		return nil, fmt.Errorf("%s: want a JSON list of rules", name)
	}
	var out []EgressRule
	for i, a := range in {
		at := fmt.Sprintf("%s: rule[%d]", name, i)
		if a.Destination == "" || a.Protocol == "" {
			return nil, fmt.Errorf("%s: needs \"protocol\" and \"destination\"", at)
		}
		if (a.Type != nil && *a.Type != -1) || (a.Code != nil && *a.Code != -1) {
			return nil, errors.New(at + `: icmp "type" and "code" other than -1 are not supported (weft's icmp rules allow echo)`)
		}
		ports := []string{""}
		if a.Ports != "" {
			ports = strings.Split(a.Ports, ",")
		}
		for _, d := range strings.Split(a.Destination, ",") {
			for _, p := range ports {
				r, err := ParseEgressRule(app, strings.TrimSpace(d), a.Protocol, strings.TrimSpace(p), overlay)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", at, err)
				}
				out = append(out, r)
			}
		}
	}
	return CheckEgressRules(out, overlay)
}

// ParseEgressYAML reads the "egress" list of a YAML policy file (ParseYAML
// reads its "policies"):
//
//	egress:
//	  - {app: web, destination: 10.0.11.0/24, protocol: tcp, ports: "443"}
//	  - {app: "*", destination: 0.0.0.0-9.255.255.255, protocol: all}   # every app
//
// given reports whether the file has the list at all (a file without it
// leaves the egress rules alone). Errors name the file, line and entry; an
// overlapping pair names both rules.
func ParseEgressYAML(name string, data []byte, overlay netip.Prefix) (rules []EgressRule, given bool, err error) {
	ents, given, err := yamlList(name, data, "egress", []string{"app", "destination", "protocol", "ports"}, 3)
	if err != nil || !given {
		return nil, false, err
	}
	for _, e := range ents {
		r, err := ParseEgressRule(e.val[0], e.val[1], e.val[2], e.val[3], overlay)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %v", e.at, err)
		}
		rules = append(rules, r)
	}
	rules, err = CheckEgressRules(rules, overlay)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", name, err)
	}
	return rules, true, nil
}

// yamlEntry is one entry of a list yamlList read: where it is ("FILE:LINE:
// KEY[i]") and its fields' values in the order asked for ("" when absent).
type yamlEntry struct {
	at  string
	val []string
}

// yamlList reads the list under key of a YAML policy file whose entries
// are maps of the given string fields, the first required of them needed.
// given reports whether the file has the key; an unknown, repeated or
// non-string field or a missing one is an error naming file, line and
// entry.
func yamlList(name string, data []byte, key string, fields []string, required int) (ents []yamlEntry, given bool, err error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, false, yamlErr(name, "", err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, false, nil // ParseYAML says what is wrong
	}
	errAt := func(n *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", name, n.Line, fmt.Sprintf(format, args...))
	}
	root := doc.Content[0]
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == key {
			if list != nil {
				return nil, false, errAt(root.Content[i], "%s: given twice", key)
			}
			list = root.Content[i+1]
		}
	}
	if list == nil {
		return nil, false, nil
	}
	if list.Kind == yaml.ScalarNode && list.Tag == "!!null" {
		return nil, false, errAt(list, "%s: null: write \"%s: []\" for no %s rules", key, key, key)
	}
	if list.Kind != yaml.SequenceNode {
		return nil, false, errAt(list, "%s: want a list", key)
	}
	ents = []yamlEntry{}
	for i, ent := range list.Content {
		path := fmt.Sprintf("%s[%d]", key, i)
		if ent.Kind != yaml.MappingNode {
			return nil, false, errAt(ent, "%s: want a map with %s", path, strings.Join(fields, ", "))
		}
		val := make([]string, len(fields))
		have := make([]bool, len(fields))
		for j := 0; j+1 < len(ent.Content); j += 2 {
			k, v := ent.Content[j], ent.Content[j+1]
			idx := slices.Index(fields, k.Value)
			switch {
			case idx < 0:
				return nil, false, errAt(k, "%s: unknown field %s", path, Quote(k.Value))
			case have[idx]:
				return nil, false, errAt(k, "%s.%s: given twice", path, k.Value)
			case v.Kind != yaml.ScalarNode:
				return nil, false, errAt(v, "%s.%s: want a string", path, k.Value)
			}
			have[idx], val[idx] = true, v.Value
		}
		for idx, f := range fields[:required] {
			if !have[idx] {
				return nil, false, errAt(ent, "%s: missing field %q", path, f)
			}
		}
		ents = append(ents, yamlEntry{at: fmt.Sprintf("%s:%d: %s", name, ent.Line, path), val: val})
	}
	return ents, true, nil
}

// DiffEgress returns what to add and remove to turn have into want.
func DiffEgress(have, want []EgressRule) (add, remove []EgressRule) { return diffSets(have, want) }

// diffSets returns the elements of want not in have (add) and those of
// have not in want (remove).
func diffSets[T comparable](have, want []T) (add, remove []T) {
	in := func(set []T, r T) bool { return slices.Contains(set, r) }
	for _, r := range want {
		if !in(have, r) {
			add = append(add, r)
		}
	}
	for _, r := range have {
		if !in(want, r) {
			remove = append(remove, r)
		}
	}
	return add, remove
}

// MarshalYAMLWithEgress is MarshalYAMLFile without ingress rules.
func MarshalYAMLWithEgress(rules []Rule, egress []EgressRule) ([]byte, error) {
	return MarshalYAMLFile(rules, egress, nil)
}

// MarshalYAMLFile writes rules as MarshalYAML does followed by the
// "egress" list that ParseEgressYAML reads and the "ingress" list that
// ParseIngressYAML reads (sorted; each left out when nil, so that pushing
// the file leaves those rules alone). It fails on a rule that does not
// validate.
func MarshalYAMLFile(rules []Rule, egress []EgressRule, ingress []IngressRule) ([]byte, error) {
	b, err := MarshalYAML(rules)
	if err != nil {
		return nil, err
	}
	type yamlRule struct {
		App         string `yaml:"app"`
		Source      string `yaml:"source,omitempty"`
		Destination string `yaml:"destination,omitempty"`
		Protocol    string `yaml:"protocol"`
		Ports       string `yaml:"ports,omitempty"`
	}
	var doc struct {
		Egress  []yamlRule `yaml:"egress,omitempty"`
		Ingress []yamlRule `yaml:"ingress,omitempty"`
	}
	if egress != nil {
		if egress, err = CheckEgressRules(egress, netip.Prefix{}); err != nil {
			return nil, err
		}
		doc.Egress = make([]yamlRule, 0, len(egress))
		for _, r := range egress {
			y := yamlRule{App: r.App, Destination: r.Destination(), Protocol: r.Protocol.String()}
			if r.Protocol.HasPorts() {
				y.Ports = r.Ports.String()
			}
			doc.Egress = append(doc.Egress, y)
		}
	}
	if ingress != nil {
		if ingress, err = CheckIngressRules(ingress, netip.Prefix{}); err != nil {
			return nil, err
		}
		doc.Ingress = make([]yamlRule, 0, len(ingress))
		for _, r := range ingress {
			doc.Ingress = append(doc.Ingress, yamlRule{App: r.App, Source: r.Source(), Protocol: r.Protocol.String(), Ports: r.Ports.String()})
		}
	}
	var buf bytes.Buffer
	buf.Write(b)
	// An empty list that was given ("egress: []") is written: omitempty
	// would leave it out, and a push would then keep the rules.
	for _, part := range []struct {
		key  string
		list []yamlRule
	}{{"egress", doc.Egress}, {"ingress", doc.Ingress}} {
		if part.list == nil {
			continue
		}
		if len(part.list) == 0 {
			fmt.Fprintf(&buf, "%s: []\n", part.key)
			continue
		}
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(map[string][]yamlRule{part.key: part.list}); err != nil {
			return nil, err
		}
		if err := enc.Close(); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}
