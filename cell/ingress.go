package cell

import (
	"context"
	"crypto/ed25519"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/policy"
)

// Ingress rules travel through the operator API as egress rules do: a
// change is a SignedPolicyChange with Ingress set (POST
// /v1/policy-changes); GET /v1/ingress-rules lists them.

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

// SignIngressChange makes a change of ingress rule r signed by priv,
// stamped with the wall clock (or just above minStamp).
func SignIngressChange(r policy.IngressRule, present bool, origin string, minStamp uint64, priv ed25519.PrivateKey) SignedPolicyChange {
	c := mesh.PolicyChange{Ingress: r, Present: present, Stamp: max(uint64(time.Now().UnixNano()), minStamp+1), Origin: origin}
	mesh.SignPolicyChange(&c, priv)
	e := FromIngressRule(r)
	return SignedPolicyChange{Ingress: &e, Present: present, Stamp: c.Stamp, Origin: origin, Signer: c.Signer, Sig: c.Sig}
}

func (a *Agent) handleListIngressRules(w http.ResponseWriter, r *http.Request) {
	out := IngressRuleList{IngressRules: []IngressRule{}}
	for _, e := range a.mesh.IngressRules() {
		out.IngressRules = append(out.IngressRules, FromIngressRule(e))
	}
	writeJSON(w, http.StatusOK, out)
}

// IngressRules lists the cluster's ingress rules.
func (c *Client) IngressRules(ctx context.Context) ([]IngressRule, error) {
	var l IngressRuleList
	return l.IngressRules, c.do(ctx, http.MethodGet, "/v1/ingress-rules", nil, &l)
}

// ChangeIngressRule adds (present) or removes r as ChangeEgressRule does.
func (c *Client) ChangeIngressRule(ctx context.Context, priv ed25519.PrivateKey, r IngressRule, present bool) (PolicyChangeResult, error) {
	rule, err := r.Rule(netip.Prefix{})
	if err != nil {
		return PolicyChangeResult{}, err
	}
	got, err := c.applyOneChange(ctx, priv != nil, func(above uint64) SignedPolicyChange {
		if priv == nil {
			return SignedPolicyChange{Ingress: &r, Present: present}
		}
		return SignIngressChange(rule, present, CLIOrigin(), above, priv)
	})
	if err == nil && got.Code >= 400 {
		err = &StatusError{Code: got.Code, Message: got.Error}
	}
	return got, err
}

// checkIngressSet checks the ingress rules as they would be after cs, as
// checkEgressSet does for egress rules: an error names two overlapping rules.
func (a *Agent) checkIngressSet(cs []mesh.PolicyChange) error {
	set := map[string]policy.IngressRule{}
	for _, r := range a.mesh.IngressRules() {
		set[r.Key()] = r
	}
	added := false
	for _, c := range cs {
		switch {
		case !c.IsIngress():
		case c.Present:
			set[c.Ingress.Key()], added = c.Ingress, true
		default:
			delete(set, c.Ingress.Key())
		}
	}
	if !added {
		return nil
	}
	_, err := policy.CheckIngressRules(slices.Collect(maps.Values(set)), a.cfg.OverlayCIDR)
	return err
}

// syncIngressLocked compiles the replicated ingress rules for this cell's
// containers (by app) into the guard's ingress chains
// (overlay/guard_linux.go), as syncEgressLocked does for egress.
func (a *Agent) syncIngressLocked() {
	if a.ov == nil {
		return
	}
	appIPs := map[string][]netip.Addr{}
	for _, e := range a.localContainers() {
		appIPs[e.App] = append(appIPs[e.App], e.IP)
	}
	if err := a.ov.SyncIngress(a.mesh.IngressRules(), appIPs); err != nil {
		a.log.Error("ingress rules (nftables) not applied", "err", err)
	}
}
