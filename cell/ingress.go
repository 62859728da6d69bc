package cell

import (
	"crypto/ed25519"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

// Ingress rules travel through the operator API as egress rules do: a
// change is a SignedPolicyChange with Ingress set (POST
// /v1/policy-changes); GET /v1/ingress-rules lists them.

// SignIngressChange makes a change of ingress rule r signed by priv,
// stamped with the wall clock (or just above minStamp).
func SignIngressChange(r policy.IngressRule, present bool, origin string, minStamp uint64, priv ed25519.PrivateKey) cellapi.SignedPolicyChange {
	c := store.PolicyChange{Ingress: r, Present: present, Stamp: max(uint64(time.Now().UnixNano()), minStamp+1), Origin: origin}
	store.SignPolicyChange(&c, priv)
	e := cellapi.FromIngressRule(r)
	return cellapi.SignedPolicyChange{Ingress: &e, Present: present, Stamp: c.Stamp, Origin: origin, Signer: c.Signer, Sig: c.Sig}
}

func (a *Agent) handleListIngressRules(w http.ResponseWriter, r *http.Request) {
	out := cellapi.IngressRuleList{IngressRules: []cellapi.IngressRule{}}
	for _, e := range a.mesh.IngressRules() {
		out.IngressRules = append(out.IngressRules, cellapi.FromIngressRule(e))
	}
	writeJSON(w, http.StatusOK, out)
}

// checkIngressSet checks the ingress rules as they would be after cs, as
// checkEgressSet does for egress rules: an error names two overlapping rules.
func (a *Agent) checkIngressSet(cs []store.PolicyChange) error {
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
