// Package policy holds weft's rules and what is done with them off the
// packet path: app-pair rules (Cloud Foundry c2c semantics: allow-only,
// directional, default deny), egress and ingress rules and their checks,
// the policy files (YAML, Cloud Foundry policy-server JSON, CF application
// security groups) and the difference of two rule sets. The mesh
// replicates these types and the CLI reads and writes them; neither needs
// the engine that enforces them (package policy/engine), which the
// agent alone links (seam_test.go checks it).
package policy

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Protocol is an IP protocol number. Only [ProtoICMP], [ProtoTCP],
// [ProtoUDP] and [ProtoAll] can appear in rules; ProtoICMP covers ICMPv6 as
// well.
type Protocol uint8

// Protocols a rule can name.
const (
	ProtoICMP Protocol = 1
	ProtoTCP  Protocol = 6
	ProtoUDP  Protocol = 17
	// ProtoAll matches tcp, udp and icmp. It is 255, the number IANA
	// reserves and that no packet carries, so it never collides with a
	// real protocol in a rule key or on the wire. An all rule carries a
	// port range like tcp and udp (1-65535 for every port); the range
	// applies to tcp and udp, icmp ignores it.
	ProtoAll Protocol = 255
)

// ParseProtocol parses "tcp", "udp", "icmp" or "all" (case-insensitive).
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "all":
		return ProtoAll, nil
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp":
		return ProtoICMP, nil
	}
	return 0, fmt.Errorf("invalid protocol %s: must be tcp, udp, icmp or all", Quote(s))
}

// String returns "tcp", "udp", "icmp", "all", or the number for other
// protocols.
func (p Protocol) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoAll:
		return "all"
	}
	return strconv.Itoa(int(p))
}

func (p Protocol) valid() bool {
	return p == ProtoTCP || p == ProtoUDP || p == ProtoICMP || p == ProtoAll
}

// HasPorts reports whether rules (or packets) of this protocol carry a
// port range.
func (p Protocol) HasPorts() bool { return p == ProtoTCP || p == ProtoUDP || p == ProtoAll }

// PortRange is an inclusive range of destination ports. The zero value means
// "no ports" and is what ICMP rules carry.
type PortRange struct{ Start, End uint16 }

// ParsePorts parses "8080" or "8080-8090". Ports are 1-65535 and the start may
// not exceed the end.
func ParsePorts(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	start, err := parsePort(s, lo)
	if err != nil {
		return PortRange{}, err
	}
	if !isRange {
		return PortRange{start, start}, nil
	}
	end, err := parsePort(s, hi)
	if err != nil {
		return PortRange{}, err
	}
	if start > end {
		return PortRange{}, fmt.Errorf("invalid ports %q: start %d is greater than end %d", s, start, end)
	}
	return PortRange{start, end}, nil
}

func parsePort(input, s string) (uint16, error) {
	switch {
	case input == "":
		return 0, errors.New(`invalid ports "": want a port 1-65535 or a range N-M`)
	case strings.HasPrefix(input, "-"):
		return 0, fmt.Errorf("invalid ports %s: want a port 1-65535 or a range N-M, not a negative number", Quote(input))
	case s == "":
		return 0, fmt.Errorf("invalid ports %s: the range lacks its end port (N-M)", Quote(input))
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil && !isRangeErr(err) {
		return 0, fmt.Errorf("invalid ports %s: %s is not a number", Quote(input), Quote(s))
	}
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("invalid ports %s: port %s is out of range 1-65535", Quote(input), clip(s))
	}
	return uint16(n), nil
}

// maxQuote is how many bytes of user input an error message repeats.
const maxQuote = 100

// Quote quotes user input for an error message, as %q does, but cut to
// about 100 bytes: longer input ends in an ellipsis and its length, e.g.
// "aaaa…" (10240 bytes). A 50 MB field makes a short error, not a 50 MB one.
func Quote(s string) string {
	if len(s) <= maxQuote {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:cutAt(s)]) + "… (" + strconv.Itoa(len(s)) + " bytes)"
}

// clip is Quote without the quotes, for input known to be printable (digits).
func clip(s string) string {
	if len(s) <= maxQuote {
		return s
	}
	return s[:cutAt(s)] + "… (" + strconv.Itoa(len(s)) + " bytes)"
}

// cutAt is where Quote cuts a long s: at most maxQuote bytes, on a rune
// boundary.
func cutAt(s string) int {
	cut := maxQuote
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return cut
}

func isRangeErr(err error) bool {
	ne, ok := err.(*strconv.NumError)
	return ok && ne.Err == strconv.ErrRange
}

// String returns "8080" for a single port and "8080-8090" for a range.
func (r PortRange) String() string {
	if r.Start == r.End {
		return strconv.Itoa(int(r.Start))
	}
	return strconv.Itoa(int(r.Start)) + "-" + strconv.Itoa(int(r.End))
}

// Contains reports whether p lies in the range.
func (r PortRange) Contains(p uint16) bool { return r.Start <= p && p <= r.End }

// Rule allows traffic from the containers of one app to those of another:
// new flows from Source to Destination using Protocol, with a destination
// port in Ports (tcp and udp) or ICMP echo requests (icmp); protocol all
// allows all three, tcp and udp within Ports. Replies of an allowed flow
// pass without a rule of their own.
type Rule struct {
	Source      string    // source app name
	Destination string    // destination app name
	Protocol    Protocol  // ProtoTCP, ProtoUDP, ProtoICMP or ProtoAll
	Ports       PortRange // destination ports; zero for icmp
}

const maxAppName = 128

// An app name is plain (APP: 1-128 characters from A-Z a-z 0-9 . _ -) or
// qualified by a Cloud Foundry org and space (ORG/SPACE/APP: three such
// segments, 128 characters in all). Names are compared whole: a rule for
// o/s/app matches only containers registered as o/s/app, not app
// (docs/policy.md, "Orgs and spaces").
func validAppName(s string) bool {
	if len(s) == 0 || len(s) > maxAppName {
		return false
	}
	seg, slashes := 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '.', c == '_', c == '-':
			seg++
		case c == '/' && seg > 0 && slashes < 2:
			seg, slashes = 0, slashes+1
		default:
			return false
		}
	}
	return seg > 0 && (slashes == 0 || slashes == 2)
}

// ValidAppName reports whether s is a plain or qualified app name.
func ValidAppName(s string) bool { return validAppName(s) }

// QualifyApp is ORG/SPACE/APP, or app when org and space are empty.
func QualifyApp(org, space, app string) string {
	if org == "" && space == "" {
		return app
	}
	return org + "/" + space + "/" + app
}

// SplitApp splits a qualified name into its org, space and app; a plain
// name has no org or space.
func SplitApp(name string) (org, space, app string) {
	parts := strings.SplitN(name, "/", 3)
	if len(parts) != 3 {
		return "", "", name
	}
	return parts[0], parts[1], parts[2]
}

// Validate checks the app names ([A-Za-z0-9._-], 1-128 characters, or
// ORG/SPACE/APP of those), the
// protocol and the ports: tcp, udp and all need a range within 1-65535
// with start <= end; icmp must have no ports. Errors name the field:
// "source", "destination", "protocol" or "ports".
func (r Rule) Validate() error {
	if !validAppName(r.Source) {
		return fmt.Errorf("invalid source app %s: must be 1-%d characters from A-Z a-z 0-9 . _ - (or ORG/SPACE/APP)", Quote(r.Source), maxAppName)
	}
	if !validAppName(r.Destination) {
		return fmt.Errorf("invalid destination app %s: must be 1-%d characters from A-Z a-z 0-9 . _ - (or ORG/SPACE/APP)", Quote(r.Destination), maxAppName)
	}
	if !r.Protocol.valid() {
		return fmt.Errorf("invalid protocol %s: must be tcp, udp, icmp or all", r.Protocol)
	}
	if !r.Protocol.HasPorts() {
		if r.Ports != (PortRange{}) {
			return fmt.Errorf("invalid ports %d-%d: icmp rules take no ports", r.Ports.Start, r.Ports.End)
		}
		return nil
	}
	switch {
	case r.Ports.Start == 0 || r.Ports.End == 0:
		return fmt.Errorf("invalid ports %d-%d for %s: ports must be within 1-65535", r.Ports.Start, r.Ports.End, r.Protocol)
	case r.Ports.Start > r.Ports.End:
		return fmt.Errorf("invalid ports %d-%d for %s: start %d is greater than end %d",
			r.Ports.Start, r.Ports.End, r.Protocol, r.Ports.Start, r.Ports.End)
	}
	return nil
}

// Key returns a canonical string that is unique per rule and stable across
// versions, e.g. "appA>appB/tcp/8080-8090" (ports always as start-end, icmp
// as 0-0). It suits map keys and CRDT identities.
func (r Rule) Key() string {
	return r.Source + ">" + r.Destination + "/" + r.Protocol.String() + "/" +
		strconv.Itoa(int(r.Ports.Start)) + "-" + strconv.Itoa(int(r.Ports.End))
}

// String returns a human form, e.g. "appA -> appB tcp 8080-8090" or
// "appA -> appB icmp".
func (r Rule) String() string {
	s := r.Source + " -> " + r.Destination + " " + r.Protocol.String()
	if r.Protocol.HasPorts() || r.Ports != (PortRange{}) {
		s += " " + r.Ports.String()
	}
	return s
}

// CompareRules orders rules by Source, Destination, Protocol and Ports
// (the order of [SortRules]; the engine checks a rule set against it).
func CompareRules(a, b Rule) int {
	return cmp.Or(
		cmp.Compare(a.Source, b.Source),
		cmp.Compare(a.Destination, b.Destination),
		cmp.Compare(a.Protocol, b.Protocol),
		cmp.Compare(a.Ports.Start, b.Ports.Start),
		cmp.Compare(a.Ports.End, b.Ports.End),
	)
}

// SortRules sorts rules by Source, Destination, Protocol and Ports.
func SortRules(rs []Rule) { slices.SortFunc(rs, CompareRules) }
