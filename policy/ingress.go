package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Ingress rules let traffic from outside the overlay reach the containers
// of an app: a host port that the portmap CNI plugin DNATs to a container,
// a router on the underlay, or a cell host (the container's own, or
// another cell's through the tunnel: FromHost). Like app rules they are
// allow-only and default deny; replies pass without a rule.

// IngressRule allows flows to App's containers with Protocol (tcp or udp)
// and a destination port in Ports, from the cell hosts (FromHost) or from
// the IPv4 sources Start-End (inclusive) outside the overlay.
type IngressRule struct {
	App        string
	FromHost   bool
	Start, End netip.Addr // source range; invalid when FromHost
	Protocol   Protocol
	Ports      PortRange
}

// IngressFromHost is the source of an ingress rule from the cell hosts, as
// the API and the CLI write it.
const IngressFromHost = "host"

// ParseIngressRule builds a rule from the command line's or the API's
// strings: source is IngressFromHost or a CIDR, range or address; ports
// "N" or "N-M" (required). Errors name the rule.
func ParseIngressRule(app, source, protocol, ports string, overlay netip.Prefix) (IngressRule, error) {
	name := fmt.Sprintf("ingress rule %s <- %s %s %s", Quote(app), Quote(source), Quote(protocol), Quote(ports))
	fail := func(err error) (IngressRule, error) { return IngressRule{}, fmt.Errorf("%s: %w", name, err) }
	r := IngressRule{App: app}
	var err error
	if source == IngressFromHost {
		r.FromHost = true
	} else if r.Start, r.End, err = ParseDestination(source); err != nil {
		return fail(fmt.Errorf("source %s", strings.TrimPrefix(err.Error(), "invalid destination ")))
	}
	if r.Protocol, err = ParseProtocol(protocol); err != nil {
		return fail(err)
	}
	if ports == "" {
		return fail(fmt.Errorf("needs a port N or range N-M"))
	}
	if r.Ports, err = ParsePorts(ports); err != nil {
		return fail(err)
	}
	if err := r.Validate(overlay); err != nil {
		return fail(err)
	}
	return r, nil
}

// Validate checks the app, the source (cell hosts, or an IPv4 range
// outside overlay when overlay is valid), the protocol (tcp or udp) and
// the ports.
func (r IngressRule) Validate(overlay netip.Prefix) error {
	if !validAppName(r.App) {
		return fmt.Errorf("invalid app %s: must be 1-%d characters from A-Z a-z 0-9 . _ -", Quote(r.App), maxAppName)
	}
	switch {
	case r.FromHost && (r.Start.IsValid() || r.End.IsValid()):
		return fmt.Errorf("from the cell hosts or from a source range, not both")
	case r.FromHost:
	case !r.Start.Is4() || !r.End.Is4():
		return fmt.Errorf("invalid source: want --from-host or an IPv4 CIDR, range or address")
	case r.Start.Compare(r.End) > 0:
		return fmt.Errorf("invalid source %v-%v: start is greater than end", r.Start, r.End)
	case overlay.IsValid() && r.Start.Compare(lastAddr(overlay)) <= 0 && r.End.Compare(overlay.Masked().Addr()) >= 0:
		return fmt.Errorf("invalid source %s: it overlaps the overlay %v, whose traffic network policies govern (add-network-policy)", r.Source(), overlay)
	}
	if r.Protocol != ProtoTCP && r.Protocol != ProtoUDP {
		return fmt.Errorf("protocol %s: ingress rules are tcp or udp", r.Protocol)
	}
	return Rule{Source: "x", Destination: "x", Protocol: r.Protocol, Ports: r.Ports}.Validate()
}

// Source returns IngressFromHost, or the source range as a CIDR, an
// address or start-end.
func (r IngressRule) Source() string {
	if r.FromHost {
		return IngressFromHost
	}
	return EgressRule{Start: r.Start, End: r.End}.Destination()
}

// Key returns a canonical string unique per rule, e.g.
// "ingress:web<host/tcp/8080-8080". It cannot collide with an app rule's
// or an egress rule's key.
func (r IngressRule) Key() string {
	src := IngressFromHost
	if !r.FromHost {
		src = r.Start.String() + "-" + r.End.String()
	}
	return "ingress:" + r.App + "<" + src + "/" + r.Protocol.String() + "/" +
		strconv.Itoa(int(r.Ports.Start)) + "-" + strconv.Itoa(int(r.Ports.End))
}

// String returns e.g. "web <- cell hosts tcp 8080" or "web <- 198.18.0.0/24 udp 53".
func (r IngressRule) String() string {
	src := "cell hosts"
	if !r.FromHost {
		src = r.Source()
	}
	return r.App + " <- " + src + " " + r.Protocol.String() + " " + r.Ports.String()
}

// SortIngressRules sorts rules by app, source, protocol and ports.
func SortIngressRules(rules []IngressRule) {
	slices.SortFunc(rules, func(a, b IngressRule) int {
		hostFirst := func(r IngressRule) int {
			if r.FromHost {
				return 0
			}
			return 1
		}
		return cmp.Or(
			cmp.Compare(a.App, b.App),
			cmp.Compare(hostFirst(a), hostFirst(b)),
			a.Start.Compare(b.Start),
			a.End.Compare(b.End),
			cmp.Compare(a.Protocol, b.Protocol),
			cmp.Compare(a.Ports.Start, b.Ports.Start),
			cmp.Compare(a.Ports.End, b.Ports.End),
		)
	})
}

// CheckIngressRules validates a whole set: every rule, and no two distinct
// rules of the same app and protocol whose sources and ports overlap (one
// would hide the other's removal). It returns the set sorted with exact
// duplicates merged; on error the caller keeps its old set.
func CheckIngressRules(rules []IngressRule, overlay netip.Prefix) ([]IngressRule, error) {
	rules = slices.Clone(rules)
	SortIngressRules(rules)
	rules = slices.Compact(rules)
	for i, r := range rules {
		if err := r.Validate(overlay); err != nil {
			return nil, fmt.Errorf("ingress rule %s: %w", r, err)
		}
		for _, o := range rules[i+1:] {
			if o.App != r.App {
				break
			}
			if overlapsIngress(r, o) {
				return nil, fmt.Errorf("ingress rule %s overlaps ingress rule %s: merge them into one", r, o)
			}
		}
	}
	return rules, nil
}

func overlapsIngress(a, b IngressRule) bool {
	if a.Protocol != b.Protocol || a.FromHost != b.FromHost {
		return false
	}
	if !a.FromHost && (a.Start.Compare(b.End) > 0 || b.Start.Compare(a.End) > 0) {
		return false
	}
	return a.Ports.Start <= b.Ports.End && b.Ports.Start <= a.Ports.End
}

// ParseIngressYAML reads the "ingress" list of a YAML policy file:
//
//	ingress:
//	  - {app: web, source: host, protocol: tcp, ports: "8080"}            # the cell hosts
//	  - {app: web, source: 198.18.0.0/24, protocol: tcp, ports: "8080"}
//
// given reports whether the file has the list at all (a file without it
// leaves the ingress rules alone). Errors name the file, line and entry;
// an overlapping pair names both rules.
func ParseIngressYAML(name string, data []byte, overlay netip.Prefix) (rules []IngressRule, given bool, err error) {
	ents, given, err := yamlList(name, data, "ingress", []string{"app", "source", "protocol", "ports"}, 4)
	if err != nil || !given {
		return nil, false, err
	}
	for _, e := range ents {
		r, err := ParseIngressRule(e.val[0], e.val[1], e.val[2], e.val[3], overlay)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %v", e.at, err)
		}
		rules = append(rules, r)
	}
	rules, err = CheckIngressRules(rules, overlay)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", name, err)
	}
	return rules, true, nil
}

// DiffIngress returns what to add and remove to turn have into want.
func DiffIngress(have, want []IngressRule) (add, remove []IngressRule) { return diffSets(have, want) }
