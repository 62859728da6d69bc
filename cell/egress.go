package cell

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

// Egress rules travel through the operator API as app rules do: a change is
// a SignedPolicyChange with Egress set (POST /v1/policy-changes), signed by
// the CLI or by the agent; GET /v1/egress-rules lists them.

// SignEgressChange makes a change of egress rule r signed by priv, stamped
// with the wall clock (or just above minStamp).
func SignEgressChange(r policy.EgressRule, present bool, origin string, minStamp uint64, priv ed25519.PrivateKey) cellapi.SignedPolicyChange {
	c := store.PolicyChange{Egress: r, Present: present, Stamp: max(uint64(time.Now().UnixNano()), minStamp+1), Origin: origin}
	store.SignPolicyChange(&c, priv)
	e := cellapi.FromEgressRule(r)
	return cellapi.SignedPolicyChange{Egress: &e, Present: present, Stamp: c.Stamp, Origin: origin, Signer: c.Signer, Sig: c.Sig}
}

func (a *Agent) handleListEgressRules(w http.ResponseWriter, r *http.Request) {
	out := cellapi.EgressRuleList{EgressRules: []cellapi.EgressRule{}}
	for _, e := range a.mesh.EgressRules() {
		out.EgressRules = append(out.EgressRules, cellapi.FromEgressRule(e))
	}
	writeJSON(w, http.StatusOK, out)
}

// checkEgressSet refuses a batch whose egress additions would leave the
// set with overlapping rules (policy.CheckEgressRules); the error names
// both rules.
func (a *Agent) checkEgressSet(cs []store.PolicyChange) error {
	set := map[string]policy.EgressRule{}
	for _, r := range a.mesh.EgressRules() {
		set[r.Key()] = r
	}
	added := false
	for _, c := range cs {
		switch {
		case !c.IsEgress():
		case c.Present:
			set[c.Egress.Key()], added = c.Egress, true
		default:
			delete(set, c.Egress.Key())
		}
	}
	if !added {
		return nil
	}
	rules := make([]policy.EgressRule, 0, len(set))
	for _, r := range set {
		rules = append(rules, r)
	}
	_, err := policy.CheckEgressRules(rules, a.cfg.OverlayCIDR)
	return err
}

// EgressDefaultFile, in a state dir, holds the egress default that `weft
// init --egress-default` chose for a new cluster ("public"); the agent
// applies it once, signed by its operator key, and renames the file to
// EgressDefaultFile + ".applied". "deny", the default, needs no rule.
const EgressDefaultFile = "egress-default"

// InitEgressDefault records the egress default of a new cluster: "deny"
// (no rule: containers reach nothing outside the overlay) or "public"
// (policy.PublicEgress: every public IPv4 address, no private range).
// newCluster says that stateDir is the first cell of a new cluster with an
// operator key: the default of a running cluster is its egress rules.
func InitEgressDefault(stateDir, mode string, newCluster bool) error {
	switch {
	case mode == "deny":
		return nil
	case mode != "public":
		return fmt.Errorf("--egress-default %q: want deny or public", mode)
	case !newCluster:
		return errors.New("--egress-default public applies to the first cell of a new cluster (which holds the operator key); " +
			"in a running cluster use weft add-egress-rule --all")
	}
	return os.WriteFile(filepath.Join(stateDir, EgressDefaultFile), []byte(mode+"\n"), 0o600)
}

// applyEgressDefault applies the egress default InitEgressDefault recorded,
// once: the file is renamed when the rules are in the replicated set.
func (a *Agent) applyEgressDefault() error {
	path := filepath.Join(a.cfg.StateDir, EgressDefaultFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if mode := strings.TrimSpace(string(b)); mode != "public" {
		return fmt.Errorf("%s: %q: want public", path, mode)
	}
	var cs []store.PolicyChange
	for _, r := range policy.PublicEgress() {
		cs = append(cs, store.PolicyChange{Egress: r, Present: true})
	}
	if err := a.mesh.SignPolicyChanges(cs); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	_, errs := a.mesh.ApplyPolicyChanges(cs)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	a.log.Info("egress default applied: every app may reach public IPv4 addresses", "rules", len(cs))
	return os.Rename(path, path+".applied")
}
