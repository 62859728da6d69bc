package cellapi

import (
	"net/netip"

	"github.com/weft-net/weft/policy"
)

// EgressRule is the JSON form of policy.EgressRule. App "*" is every app
// (--all); Destination is a CIDR, a range A-B or an address; Ports is "",
// "N" or "N-M" (empty: every port; icmp takes none).
type EgressRule struct {
	App         string `json:"app"`
	Destination string `json:"destination"`
	Protocol    string `json:"protocol"`
	Ports       string `json:"ports,omitempty"`
}

// EgressRuleList is the answer of GET /v1/egress-rules.
type EgressRuleList struct {
	EgressRules []EgressRule `json:"egress_rules"`
}

// Rule converts to a validated policy.EgressRule; an invalid overlay skips
// the overlay check (the agent makes it).
func (e EgressRule) Rule(overlay netip.Prefix) (policy.EgressRule, error) {
	return policy.ParseEgressRule(e.App, e.Destination, e.Protocol, e.Ports, overlay)
}

// FromEgressRule is the JSON form of r.
func FromEgressRule(r policy.EgressRule) EgressRule {
	e := EgressRule{App: r.App, Destination: r.Destination(), Protocol: r.Protocol.String()}
	if r.Ports != (policy.PortRange{}) {
		e.Ports = r.Ports.String()
	}
	return e
}

// IngressRule is the JSON form of policy.IngressRule. Source is "host"
// (the cell hosts) or a CIDR, a range A-B or an address; Ports "N" or "N-M".
type IngressRule struct {
	App      string `json:"app"`
	Source   string `json:"source"`
	Protocol string `json:"protocol"`
	Ports    string `json:"ports"`
}

// IngressRuleList is the answer of GET /v1/ingress-rules.
type IngressRuleList struct {
	IngressRules []IngressRule `json:"ingress_rules"`
}

// Rule converts to a validated policy.IngressRule; an invalid overlay
// skips the overlay check (the agent makes it).
func (e IngressRule) Rule(overlay netip.Prefix) (policy.IngressRule, error) {
	return policy.ParseIngressRule(e.App, e.Source, e.Protocol, e.Ports, overlay)
}

// FromIngressRule is the JSON form of r.
func FromIngressRule(r policy.IngressRule) IngressRule {
	return IngressRule{App: r.App, Source: r.Source(), Protocol: r.Protocol.String(), Ports: r.Ports.String()}
}

// InternalRoute is the JSON form of store.Route (mesh/store):
// HOST.DOMAIN -> APP.
type InternalRoute struct {
	Host   string `json:"host"`
	Domain string `json:"domain"`
	App    string `json:"app"`
}

// RouteList answers GET /v1/routes.
type RouteList struct {
	Routes []InternalRoute `json:"routes"`
}

// RouteChangeRequest is the body of POST /v1/route-changes: a route to map
// (present) or unmap, signed by an operator key, or unsigned to have the
// agent sign it with its own operator key.
type RouteChangeRequest struct {
	Route   InternalRoute `json:"route"`
	Present bool          `json:"present"`
	Stamp   uint64        `json:"stamp,omitempty"`
	Origin  string        `json:"origin,omitempty"`
	Signer  []byte        `json:"signer,omitempty"`
	Sig     []byte        `json:"sig,omitempty"`
}
