package store

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/weft-net/weft/policy"
)

// Operator authority: every policy change (and every route change and
// cluster keyring operation) is signed with an operator's ed25519 key, and
// every cell verifies the signature against its trusted operator keys
// before it merges the change, whatever way it arrived (gossip, push/pull,
// the local API, state.json). A host that holds the cluster key but no
// operator key can join the gossip, but cannot change policy.

// ErrNoOperatorKey is returned (by package mesh's AddPolicy, RemovePolicy,
// MapRoute, SignPolicyChanges and SignKeyringOp) on a cell that holds no
// operator private key.
var ErrNoOperatorKey = errors.New("this cell holds no operator key: sign with --operator-key")

// Reasons a signed change is refused.
var (
	errNotSigned    = errors.New("not signed")
	errBadSignature = errors.New("bad signature")
)

// maxFutureStamp bounds how far ahead of this cell's clock the stamp of a
// change submitted through the local API may be.
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

// WireRule is policy.Rule, policy.EgressRule or policy.IngressRule in the
// replicated state, independent of any JSON form the policy package may
// give them. An egress rule has Lo and Hi (its destination range) and no
// Dst; Src is its app. An ingress rule has In set, Src its app, and Lo and
// Hi its source range (none: from the cell hosts).
type WireRule struct {
	Src   string     `json:"s"`
	Dst   string     `json:"d,omitempty"`
	Proto uint8      `json:"p"`
	Start uint16     `json:"a"`
	End   uint16     `json:"b"`
	Lo    netip.Addr `json:"l,omitzero"`
	Hi    netip.Addr `json:"h,omitzero"`
	In    bool       `json:"i,omitempty"`
}

// ToWire is app rule r as a WireRule.
func ToWire(r policy.Rule) WireRule {
	return WireRule{Src: r.Source, Dst: r.Destination, Proto: uint8(r.Protocol), Start: r.Ports.Start, End: r.Ports.End}
}

// ToWireEgress is egress rule r as a WireRule.
func ToWireEgress(r policy.EgressRule) WireRule {
	return WireRule{Src: r.App, Proto: uint8(r.Protocol), Start: r.Ports.Start, End: r.Ports.End, Lo: r.Start, Hi: r.End}
}

// ToWireIngress is ingress rule r as a WireRule.
func ToWireIngress(r policy.IngressRule) WireRule {
	return WireRule{Src: r.App, Proto: uint8(r.Protocol), Start: r.Ports.Start, End: r.Ports.End, Lo: r.Start, Hi: r.End, In: true}
}

// IsEgress reports whether w is an egress rule.
func (w WireRule) IsEgress() bool { return !w.In && (w.Lo.IsValid() || w.Hi.IsValid()) }

// IsIngress reports whether w is an ingress rule.
func (w WireRule) IsIngress() bool { return w.In }

// EgressRule is w as an egress rule.
func (w WireRule) EgressRule() policy.EgressRule { return w.egressRule() }

// IngressRule is w as an ingress rule.
func (w WireRule) IngressRule() policy.IngressRule { return w.ingressRule() }

// Rule is w as an app rule.
func (w WireRule) Rule() policy.Rule { return w.rule() }

func (w WireRule) egressRule() policy.EgressRule {
	return policy.EgressRule{App: w.Src, Start: w.Lo, End: w.Hi, Protocol: policy.Protocol(w.Proto),
		Ports: policy.PortRange{Start: w.Start, End: w.End}}
}

func (w WireRule) ingressRule() policy.IngressRule {
	return policy.IngressRule{App: w.Src, FromHost: !w.Lo.IsValid() && !w.Hi.IsValid(), Start: w.Lo, End: w.Hi,
		Protocol: policy.Protocol(w.Proto), Ports: policy.PortRange{Start: w.Start, End: w.End}}
}

// Key is the register's key: Rule.Key(), EgressRule.Key() or
// IngressRule.Key().
func (w WireRule) Key() string {
	switch {
	case w.IsIngress():
		return w.ingressRule().Key()
	case w.IsEgress():
		return w.egressRule().Key()
	}
	return w.rule().Key()
}

// Validate checks w as Rule.Validate, EgressRule.Validate or
// IngressRule.Validate does; egress and ingress rules are checked against
// overlay when it is valid.
func (w WireRule) Validate(overlay netip.Prefix) error {
	switch {
	case (w.IsEgress() || w.IsIngress()) && w.Dst != "":
		return errors.New("egress or ingress rule with a destination app")
	case w.IsIngress():
		return w.ingressRule().Validate(overlay)
	case w.IsEgress():
		return w.egressRule().Validate(overlay)
	}
	return w.rule().Validate()
}

// String names the rule for errors and logs.
func (w WireRule) String() string {
	switch {
	case w.IsIngress():
		return "ingress rule " + w.ingressRule().String()
	case w.IsEgress():
		return "egress rule " + w.egressRule().String()
	}
	return w.rule().String()
}

func (w WireRule) rule() policy.Rule {
	return policy.Rule{
		Source:      w.Src,
		Destination: w.Dst,
		Protocol:    policy.Protocol(w.Proto),
		Ports:       policy.PortRange{Start: w.Start, End: w.End},
	}
}

// PolicyReg is one policy CRDT register.
type PolicyReg struct {
	Rule    WireRule `json:"r"`
	Present bool     `json:"p,omitempty"`
	Stamp   uint64   `json:"t"`
	Origin  string   `json:"o"`
	Signer  []byte   `json:"k,omitempty"` // operator ed25519 public key
	Sig     []byte   `json:"g,omitempty"` // its signature (policySignedBytes)
}

// newer reports whether p wins over q.
func (p PolicyReg) newer(q PolicyReg) bool {
	if p.Stamp != q.Stamp {
		return p.Stamp > q.Stamp
	}
	return p.Origin > q.Origin
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
	c.Sig = ed25519.Sign(priv, policySignedBytes(c.Wire(), c.Present, c.Stamp, c.Origin))
}

// IsEgress reports whether c changes an egress rule.
func (c PolicyChange) IsEgress() bool { return c.Egress.App != "" }

// IsIngress reports whether c changes an ingress rule.
func (c PolicyChange) IsIngress() bool { return c.Ingress.App != "" }

// RuleString names the changed rule.
func (c PolicyChange) RuleString() string { return c.Wire().String() }

// Wire is the changed rule as a WireRule.
func (c PolicyChange) Wire() WireRule {
	if c.IsIngress() {
		return ToWireIngress(c.Ingress)
	}
	if c.IsEgress() {
		return ToWireEgress(c.Egress)
	}
	return ToWire(c.Rule)
}

// Reg is c as a register.
func (c PolicyChange) Reg() PolicyReg {
	return PolicyReg{Rule: c.Wire(), Present: c.Present, Stamp: c.Stamp, Origin: c.Origin, Signer: c.Signer, Sig: c.Sig}
}

// policySignedBytes is the message an operator signs for a policy change:
// a domain tag and the fields in a fixed binary layout. An egress rule has
// its own tag, and its range where an app rule has its destination app.
func policySignedBytes(r WireRule, present bool, stamp uint64, origin string) []byte {
	b := make([]byte, 0, 64+len(r.Src)+len(r.Dst)+len(origin))
	switch {
	case r.IsIngress():
		b = append(b, "weft ingress change v1\x00"...)
		b = appendStr(b, r.Src)
		if r.Lo.IsValid() || r.Hi.IsValid() {
			b = append(b, 1)
			b = append(b, r.Lo.AsSlice()...)
			b = append(b, r.Hi.AsSlice()...)
		} else {
			b = append(b, 0) // from the cell hosts
		}
	case r.IsEgress():
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

// Verify checks that sig is signer's signature of msg and that signer is
// a trusted operator key. The error names why not. No lock needed.
func (s *Store) Verify(signer, sig, msg []byte) error {
	switch {
	case len(sig) == 0 && len(signer) == 0:
		return errNotSigned
	case len(signer) != ed25519.PublicKeySize || !s.trusted[string(signer)]:
		return fmt.Errorf("signed by an untrusted key %s", Fingerprint(signer))
	case !ed25519.Verify(signer, msg, sig):
		return errBadSignature
	}
	return nil
}

func (s *Store) verifyPolicy(p PolicyReg) error {
	return s.Verify(p.Signer, p.Sig, policySignedBytes(p.Rule, p.Present, p.Stamp, p.Origin))
}

// RejectedPolicies counts policy changes (and route changes and keyring
// operations) refused because they were unsigned, signed by an untrusted
// key, or wrongly signed. No lock needed.
func (s *Store) RejectedPolicies() uint64 { return s.rejectedPol.Load() }

// RejectSigned counts and logs (rate-limited) a refused signed message.
// No lock needed.
func (s *Store) RejectSigned(what, from string, err error) {
	n := s.rejectedPol.Add(1)
	s.rejMu.Lock()
	now := time.Now()
	if now.Sub(s.rejPolLog) < logEvery {
		s.rejMu.Unlock()
		return
	}
	s.rejPolLog = now
	s.rejMu.Unlock()
	s.log.Warn("rejected "+what+": "+err.Error(), "origin", from, "rejected_total", n)
}

// CheckPolicyChange validates c (its rules against overlay) and verifies
// its signature, and returns its register. No lock needed.
func (s *Store) CheckPolicyChange(c PolicyChange, overlay netip.Prefix) (p PolicyReg, err error) {
	if n := btoi(c.Rule != (policy.Rule{})) + btoi(c.IsEgress()) + btoi(c.IsIngress()); n > 1 {
		return p, errors.New("mesh: a policy change names one of an app rule, an egress rule or an ingress rule")
	}
	if err := c.Wire().Validate(overlay); err != nil {
		return p, err
	}
	if c.Origin == "" || len(c.Origin) > MaxNameLen {
		return p, errors.New("mesh: policy change needs an origin of 1-253 bytes")
	}
	p = c.Reg()
	if err := s.verifyPolicy(p); err != nil {
		s.RejectSigned("policy change", c.Origin, err)
		return p, fmt.Errorf("policy change refused: %w", err)
	}
	if len(PolicyMsg(p).Body) > MaxMsg {
		return p, errors.New("mesh: rule too long for a gossip message")
	}
	return p, nil
}

// MergePolicyChange merges the change c (register p, checked by
// CheckPolicyChange) into the policy set. changed reports whether the
// rule's presence changed: adding a present rule or removing an absent one
// is a no-op (false, nil). A change older than the one the set holds for
// the rule is a *StaleChangeError; one stamped more than maxFutureStamp
// ahead of this cell's clock is refused.
func (s *Store) MergePolicyChange(c PolicyChange, p PolicyReg) (changed bool, err error) {
	if limit := uint64(s.now().Add(maxFutureStamp).UnixNano()); c.Stamp > limit {
		return false, fmt.Errorf("policy change refused: its stamp is %s ahead of this cell's clock (check the clocks)",
			aheadBy(c.Stamp, s.now()))
	}
	k := p.Rule.Key()
	have, ok := s.pols[k]
	if (ok && have.Present) == c.Present {
		s.ObserveStamp(c.Stamp)
		return false, nil
	}
	if ok && !p.newer(have) {
		return false, &StaleChangeError{Rule: c.RuleString(), Current: have.Stamp}
	}
	s.ObserveStamp(c.Stamp)
	s.putPolicy(k, p)
	return true, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Keyring operations.
const (
	KeyInstall = "install" // add Key to the keyring
	KeyUse     = "use"     // add Key if missing and make it the primary key
	KeyRemove  = "remove"  // remove the key whose Fingerprint is KeyID
)

// KeyringOpsKept is how many recent keyring operations a cell keeps and
// sends in push/pull.
const KeyringOpsKept = 16

// KeyringOp is one operator-signed change of the cluster keyring (package
// mesh applies it to memberlist's keyring).
type KeyringOp struct {
	Op     string            `json:"op"`
	Key    []byte            `json:"key,omitempty"`    // install, use: 32 bytes
	KeyID  string            `json:"key_id,omitempty"` // remove: Fingerprint of the key
	Stamp  uint64            `json:"t"`                // orders operations; wall-clock ns of the signer
	Signer ed25519.PublicKey `json:"k"`
	Sig    []byte            `json:"g"`
}

// SignKeyringOp signs op with priv and sets op.Signer and op.Sig.
func SignKeyringOp(op *KeyringOp, priv ed25519.PrivateKey) {
	op.Signer = priv.Public().(ed25519.PublicKey)
	op.Sig = ed25519.Sign(priv, op.SignedBytes())
}

// SignedBytes is the message an operator signs for op.
func (op *KeyringOp) SignedBytes() []byte {
	b := append([]byte(nil), "weft keyring op v1\x00"...)
	b = appendStr(b, op.Op)
	b = appendStr(b, string(op.Key))
	b = appendStr(b, op.KeyID)
	return binary.BigEndian.AppendUint64(b, op.Stamp)
}

// Validate checks op's operation and key.
func (op *KeyringOp) Validate() error {
	switch op.Op {
	case KeyInstall, KeyUse:
		if len(op.Key) != 32 {
			return fmt.Errorf("keyring %s: a cluster key is 32 bytes, not %d", op.Op, len(op.Key))
		}
	case KeyRemove:
		if op.KeyID == "" || len(op.KeyID) > 64 {
			return errors.New("keyring remove: no key id")
		}
	default:
		return fmt.Errorf("unknown keyring operation %q", op.Op)
	}
	return nil
}

// KeyringMsg is the gossip message of op.
func KeyringMsg(op KeyringOp) Msg {
	return Msg{Name: fmt.Sprintf("k/%d", op.Stamp), Body: Encode(MsgKeyring, op)}
}
