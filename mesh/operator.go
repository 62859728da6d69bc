package mesh

import (
	"crypto/ed25519"
	"fmt"

	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

// Operator authority: every policy change (and every cluster keyring
// operation, keyring.go) is signed with an operator's ed25519 key, and every
// cell verifies the signature against Config.TrustedOperators before it
// merges the change (package store: signatures, verification, merge).
// Here: the API of the Mesh that applies changes and spreads them.

// RejectedPolicies counts policy changes (and keyring operations) refused
// because they were unsigned, signed by an untrusted key, or wrongly signed.
func (m *Mesh) RejectedPolicies() uint64 { return m.st.RejectedPolicies() }

// ApplyPolicyChange verifies an operator-signed change and merges it into
// the policy set, which gossips it to every cell. changed reports whether
// the rule's presence changed: adding a present rule or removing an absent
// one is a no-op (false, nil). A change older than the one the set holds
// for the rule is a *store.StaleChangeError.
func (m *Mesh) ApplyPolicyChange(c store.PolicyChange) (changed bool, err error) {
	changes, errs := m.ApplyPolicyChanges([]store.PolicyChange{c})
	return changes[0], errs[0]
}

// ApplyPolicyChanges applies changes in order, each as ApplyPolicyChange
// does, and as one batch:
//
//   - all of them are merged under one hold of mu, so no reader of the
//     policy set (Policies, the listener, a peer's push/pull) ever sees a
//     part of the batch: a rule replaced by another (8082 by 8081-8090) is
//     never absent from both;
//   - the changed registers leave as one message per peer (spreadPolicies,
//     over TCP), which every cell merges and passes on as a whole; a
//     single change goes as gossip. (Gossip would carry a batch as one
//     message per change, merged one by one in any order.)
//   - state.json is written once at the end rather than after each: a
//     policy file of n rules pushed in batches would otherwise write the
//     growing set n times. If that write fails, every change applied
//     reports the error (changed and err both set).
//
// Signatures are checked before mu is taken.
func (m *Mesh) ApplyPolicyChanges(cs []store.PolicyChange) (changed []bool, errs []error) {
	changed, errs = make([]bool, len(cs)), make([]error, len(cs))
	ps := make([]store.PolicyReg, len(cs))
	for i, c := range cs {
		ps[i], errs[i] = m.st.CheckPolicyChange(c, m.cfg.OverlayCIDR)
	}
	var news []store.PolicyReg
	m.mu.Lock()
	for i, c := range cs {
		if errs[i] == nil {
			if changed[i], errs[i] = m.st.MergePolicyChange(c, ps[i]); changed[i] {
				news = append(news, ps[i])
			}
		}
	}
	m.mu.Unlock()
	if len(news) == 0 {
		return changed, errs
	}
	if len(news) >= bulkPolicies {
		m.spreadPolicies(news)
	} else {
		for _, p := range news {
			m.announce(bcast(store.PolicyMsg(p)))
		}
	}
	if err := m.committed(); err != nil {
		for i := range cs {
			if changed[i] {
				errs[i] = err
			}
		}
	}
	return changed, errs
}

// SignPolicyChanges signs cs in place with this cell's operator key, as
// AddPolicy does: stamped with the cell's hybrid logical clock (so above
// every change it knows of), origin this cell. Then ApplyPolicyChanges
// applies them as one batch.
func (m *Mesh) SignPolicyChanges(cs []store.PolicyChange) error {
	key := m.cfg.OperatorKey
	if key == nil {
		return store.ErrNoOperatorKey
	}
	if pub := key.Public().(ed25519.PublicKey); !m.st.Trusted(pub) {
		return fmt.Errorf("policy change refused: signed by an untrusted key %s", store.Fingerprint(pub))
	}
	m.mu.Lock()
	for i := range cs {
		cs[i].Stamp, cs[i].Origin = m.st.NextStamp(), m.cfg.Name
	}
	m.mu.Unlock()
	for i := range cs {
		store.SignPolicyChange(&cs[i], key)
	}
	return nil
}

// PolicyStamp returns the stamp of the newest change of r this cell knows
// (0 if none): a signer must stamp a new change of r above it.
func (m *Mesh) PolicyStamp(r policy.Rule) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Stamp(r.Key())
}

// EgressStamp is PolicyStamp for an egress rule.
func (m *Mesh) EgressStamp(r policy.EgressRule) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Stamp(r.Key())
}

// IngressStamp is PolicyStamp for an ingress rule.
func (m *Mesh) IngressStamp(r policy.IngressRule) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Stamp(r.Key())
}
