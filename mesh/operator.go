package mesh

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/weft-net/weft/policy"
)

// Operator authority: every policy change (and every cluster keyring
// operation, keyring.go) is signed with an operator's ed25519 key, and every
// cell verifies the signature against Config.TrustedOperators before it
// merges the change, whatever way it arrived (gossip, push/pull, the local
// API, state.json). A host that holds the cluster key but no operator key
// can join the gossip, but cannot change policy.

// ErrNoOperatorKey is returned by AddPolicy and RemovePolicy on a cell that
// holds no operator private key.
var ErrNoOperatorKey = errors.New("this cell holds no operator key: sign with --operator-key")

// Reasons a signed change is refused.
var (
	errNotSigned    = errors.New("not signed")
	errBadSignature = errors.New("bad signature")
)

// maxFutureStamp bounds how far ahead of this cell's clock the stamp of a
// change submitted through ApplyPolicyChange may be.
const maxFutureStamp = 5 * time.Minute

// aheadBy says how far stamp (unix ns) is ahead of now, for an error:
// "6m0s", "3 days", "57 years". A stamp past what time.Duration holds (292
// years) is "more than 292 years", not a negative duration.
func aheadBy(stamp uint64, now time.Time) string {
	n := uint64(max(now.UnixNano(), 0))
	if stamp <= n {
		return "0s"
	}
	d := stamp - n
	const day, year = 24 * time.Hour, 8766 * time.Hour // a Julian year
	switch {
	case d > math.MaxInt64:
		return "more than 292 years"
	case time.Duration(d) >= 2*year:
		return fmt.Sprintf("%d years", time.Duration(d)/year)
	case time.Duration(d) >= 2*day:
		return fmt.Sprintf("%d days", time.Duration(d)/day)
	}
	return time.Duration(d).Round(time.Second).String()
}

// PolicyChange is one operator-signed change of the replicated policy set:
// the rule is added (Present) or removed. Stamp orders changes of the same
// rule (a hybrid logical clock value; the CLI uses wall-clock nanoseconds),
// Origin names who made it (a cell or "cli@HOST").
//
// A change of an egress rule sets Egress (its App is not empty) and leaves
// Rule zero: egress rules are registers of the same set, signed, merged,
// gossiped and persisted as app rules are.
//
// A change of an ingress rule sets Ingress (its App is not empty) the
// same way, with its own signature domain.
type PolicyChange struct {
	Rule    policy.Rule
	Egress  policy.EgressRule
	Ingress policy.IngressRule
	Present bool
	Stamp   uint64
	Origin  string
	Signer  ed25519.PublicKey
	Sig     []byte
}

// StaleChangeError says that the policy set holds a newer change of the
// rule than the one submitted; re-sign with a stamp above Current.
type StaleChangeError struct {
	Rule    string
	Current uint64
}

func (e *StaleChangeError) Error() string {
	return fmt.Sprintf("a newer change of %s exists (stamp %d): re-sign with a later stamp", e.Rule, e.Current)
}

// Fingerprint names a public key: the first 8 bytes of its SHA-256, hex.
func Fingerprint(pub []byte) string {
	h := sha256.Sum256(pub)
	return hex.EncodeToString(h[:8])
}

// SignPolicyChange signs c with priv and sets c.Signer and c.Sig.
func SignPolicyChange(c *PolicyChange, priv ed25519.PrivateKey) {
	c.Signer = priv.Public().(ed25519.PublicKey)
	c.Sig = ed25519.Sign(priv, policySignedBytes(c.wire(), c.Present, c.Stamp, c.Origin))
}

// IsEgress reports whether c changes an egress rule.
func (c PolicyChange) IsEgress() bool { return c.Egress.App != "" }

// IsIngress reports whether c changes an ingress rule.
func (c PolicyChange) IsIngress() bool { return c.Ingress.App != "" }

// RuleString names the changed rule.
func (c PolicyChange) RuleString() string { return c.wire().String() }

func (c PolicyChange) wire() wireRule {
	if c.IsIngress() {
		return toWireIngress(c.Ingress)
	}
	if c.IsEgress() {
		return toWireEgress(c.Egress)
	}
	return toWire(c.Rule)
}

func (c PolicyChange) entry() polEntry {
	return polEntry{Rule: c.wire(), Present: c.Present, Stamp: c.Stamp, Origin: c.Origin, Signer: c.Signer, Sig: c.Sig}
}

// policySignedBytes is the message an operator signs for a policy change:
// a domain tag and the fields in a fixed binary layout. An egress rule has
// its own tag, and its range where an app rule has its destination app.
func policySignedBytes(r wireRule, present bool, stamp uint64, origin string) []byte {
	b := make([]byte, 0, 64+len(r.Src)+len(r.Dst)+len(origin))
	switch {
	case r.isIngress():
		b = append(b, "weft ingress change v1\x00"...)
		b = appendStr(b, r.Src)
		if r.Lo.IsValid() || r.Hi.IsValid() {
			b = append(b, 1)
			b = append(b, r.Lo.AsSlice()...)
			b = append(b, r.Hi.AsSlice()...)
		} else {
			b = append(b, 0) // from the cell hosts
		}
	case r.isEgress():
		b = append(b, "weft egress change v1\x00"...)
		b = appendStr(b, r.Src)
		b = append(b, r.Lo.AsSlice()...)
		b = append(b, r.Hi.AsSlice()...)
	default:
		b = append(b, "weft policy change v1\x00"...)
		b = appendStr(b, r.Src)
		b = appendStr(b, r.Dst)
	}
	b = append(b, r.Proto)
	b = binary.BigEndian.AppendUint16(b, r.Start)
	b = binary.BigEndian.AppendUint16(b, r.End)
	if present {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint64(b, stamp)
	return appendStr(b, origin)
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// verifySig checks that sig is signer's signature of msg and that signer
// is a trusted operator key. The error names why not.
func (m *Mesh) verifySig(signer, sig, msg []byte) error {
	switch {
	case len(sig) == 0 && len(signer) == 0:
		return errNotSigned
	case len(signer) != ed25519.PublicKeySize || !m.trusted[string(signer)]:
		return fmt.Errorf("signed by an untrusted key %s", Fingerprint(signer))
	case !ed25519.Verify(signer, msg, sig):
		return errBadSignature
	}
	return nil
}

func (m *Mesh) verifyPolicy(p polEntry) error {
	return m.verifySig(p.Signer, p.Sig, policySignedBytes(p.Rule, p.Present, p.Stamp, p.Origin))
}

// RejectedPolicies counts policy changes (and keyring operations) refused
// because they were unsigned, signed by an untrusted key, or wrongly signed.
func (m *Mesh) RejectedPolicies() uint64 { return m.rejectedPol.Load() }

// rejectSigned counts and logs (rate-limited) a refused signed message.
func (m *Mesh) rejectSigned(what, from string, err error) {
	n := m.rejectedPol.Add(1)
	m.rejMu.Lock()
	now := time.Now()
	if now.Sub(m.rejPolLog) < logEvery {
		m.rejMu.Unlock()
		return
	}
	m.rejPolLog = now
	m.rejMu.Unlock()
	m.log.Warn("rejected "+what+": "+err.Error(), "origin", from, "rejected_total", n)
}

// ApplyPolicyChange verifies an operator-signed change and merges it into
// the policy set, which gossips it to every cell. changed reports whether
// the rule's presence changed: adding a present rule or removing an absent
// one is a no-op (false, nil). A change older than the one the set holds
// for the rule is a *StaleChangeError.
func (m *Mesh) ApplyPolicyChange(c PolicyChange) (changed bool, err error) {
	changes, errs := m.ApplyPolicyChanges([]PolicyChange{c})
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
func (m *Mesh) ApplyPolicyChanges(cs []PolicyChange) (changed []bool, errs []error) {
	changed, errs = make([]bool, len(cs)), make([]error, len(cs))
	ps := make([]polEntry, len(cs))
	for i, c := range cs {
		ps[i], errs[i] = m.checkPolicyChange(c)
	}
	var news []polEntry
	m.mu.Lock()
	for i, c := range cs {
		if errs[i] == nil {
			if changed[i], errs[i] = m.mergePolicyChangeLocked(c, ps[i]); changed[i] {
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
			m.announce(policyBroadcast(p))
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
func (m *Mesh) SignPolicyChanges(cs []PolicyChange) error {
	key := m.cfg.OperatorKey
	if key == nil {
		return ErrNoOperatorKey
	}
	if pub := key.Public().(ed25519.PublicKey); !m.trusted[string(pub)] {
		return fmt.Errorf("policy change refused: signed by an untrusted key %s", Fingerprint(pub))
	}
	m.mu.Lock()
	for i := range cs {
		cs[i].Stamp, cs[i].Origin = m.st.nextStamp(), m.cfg.Name
	}
	m.mu.Unlock()
	for i := range cs {
		SignPolicyChange(&cs[i], key)
	}
	return nil
}

// checkPolicyChange validates and verifies c (no lock needed) and returns
// its register.
func (m *Mesh) checkPolicyChange(c PolicyChange) (p polEntry, err error) {
	if n := btoi(c.Rule != (policy.Rule{})) + btoi(c.IsEgress()) + btoi(c.IsIngress()); n > 1 {
		return p, errors.New("mesh: a policy change names one of an app rule, an egress rule or an ingress rule")
	}
	if err := c.wire().validate(m.cfg.OverlayCIDR); err != nil {
		return p, err
	}
	if c.Origin == "" || len(c.Origin) > maxNameLen {
		return p, errors.New("mesh: policy change needs an origin of 1-253 bytes")
	}
	p = c.entry()
	if err := m.verifyPolicy(p); err != nil {
		m.rejectSigned("policy change", c.Origin, err)
		return p, fmt.Errorf("policy change refused: %w", err)
	}
	if len(encode(msgPolicy, p)) > maxMsg {
		return p, errors.New("mesh: rule too long for a gossip message")
	}
	return p, nil
}

// mergePolicyChangeLocked merges the checked change c (register p) into
// the policy set; see ApplyPolicyChange.
func (m *Mesh) mergePolicyChangeLocked(c PolicyChange, p polEntry) (changed bool, err error) {
	if limit := uint64(m.st.now().Add(maxFutureStamp).UnixNano()); c.Stamp > limit {
		return false, fmt.Errorf("policy change refused: its stamp is %s ahead of this cell's clock (check the clocks)",
			aheadBy(c.Stamp, m.st.now()))
	}
	k := p.Rule.key()
	have, ok := m.st.pols[k]
	if (ok && have.Present) == c.Present {
		m.st.observeStamp(c.Stamp)
		return false, nil
	}
	if ok && !p.newer(have) {
		return false, &StaleChangeError{Rule: c.RuleString(), Current: have.Stamp}
	}
	m.st.observeStamp(c.Stamp)
	m.st.putPolicy(k, p)
	return true, nil
}

// PolicyStamp returns the stamp of the newest change of r this cell knows
// (0 if none): a signer must stamp a new change of r above it.
func (m *Mesh) PolicyStamp(r policy.Rule) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.pols[r.Key()].Stamp
}

// EgressStamp is PolicyStamp for an egress rule.
func (m *Mesh) EgressStamp(r policy.EgressRule) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.pols[r.Key()].Stamp
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// IngressStamp is PolicyStamp for an ingress rule.
func (m *Mesh) IngressStamp(r policy.IngressRule) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.pols[r.Key()].Stamp
}
