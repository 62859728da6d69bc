package cellapi

import (
	"crypto/ed25519"
	"fmt"
)

// The operator endpoints (served by cell/operator.go, egress.go, ingress.go
// and routes.go):
//
//	POST /v1/policy-changes  PolicyChangesRequest -> PolicyChangesResponse
//	GET  /v1/egress-rules    -> EgressRuleList
//	GET  /v1/ingress-rules   -> IngressRuleList
//	GET  /v1/routes          -> RouteList
//	POST /v1/route-changes   RouteChangeRequest
//	GET  /v1/cluster-keys    -> KeyringStatus
//	POST /v1/cluster-keys    KeyringRequest -> KeyringStatus
//
// A change is signed by an operator key (the CLI signs with cell.SignedPolicy
// and its kin in cell/client_sign.go, which need the mesh's signatures) or
// sent unsigned for the agent to sign with its own operator key.

// SignedPolicyChange is the JSON form of store.PolicyChange (mesh/store):
// a change of an app rule (Rule) or, with Egress set, of an egress rule.
type SignedPolicyChange struct {
	Rule    PolicyRule   `json:"rule"`
	Egress  *EgressRule  `json:"egress,omitempty"`
	Ingress *IngressRule `json:"ingress,omitempty"`
	Present bool         `json:"present"`
	Stamp   uint64       `json:"stamp"`
	Origin  string       `json:"origin"`
	Signer  []byte       `json:"signer"` // ed25519 public key (base64 in JSON)
	Sig     []byte       `json:"sig"`
}

// PolicyChangesRequest is the body of POST /v1/policy-changes. The agent
// applies the changes as one batch: every cell goes from the set before
// to the set after, with no state in between (a policy push that replaces
// a rule never cuts the flows it allowed). A change without Sig and Signer
// is signed by the agent with its own operator key (403 without one).
//
// A batch (more than one change, or Push) that would remove more than half
// of the current set (removals > current/2, current > 0: removing the
// only rule counts) is refused whole with 412 unless AllowLargeRemoval: a
// file that lost its rules by mistake must not empty the cluster's set.
// A Push with an invalid change (a 400 of its own) is refused whole with
// 400, naming every bad change.
type PolicyChangesRequest struct {
	Changes           []SignedPolicyChange `json:"changes"`
	Push              bool                 `json:"push,omitempty"`                // a policy push, checked even with one change
	AllowLargeRemoval bool                 `json:"allow_large_removal,omitempty"` // weft policy push --allow-large-removal
}

// LargeRemoval reports whether removing removals of current rules is more
// than half of the set, which a push needs --allow-large-removal for.
func LargeRemoval(removals, current int) bool {
	return current > 0 && 2*removals > current
}

// LargeRemovalError is the error of a push refused by LargeRemoval.
func LargeRemovalError(removals, current int) string {
	return fmt.Sprintf("this push removes %d of the %d policies (more than half): "+
		"check the file, and push again with --allow-large-removal if that is meant", removals, current)
}

// PolicyChangeResult answers one change: Code is 201 (added), 200 (was
// there already), 204 (removed), 404 (was not there), 409 (stale: re-sign
// above CurrentStamp), 403 (signature refused), 400 (bad change).
type PolicyChangeResult struct {
	Code         int    `json:"code"`
	Error        string `json:"error,omitempty"`
	CurrentStamp uint64 `json:"current_stamp,omitempty"`
	// Warnings about an added egress rule (policy.EgressRule.Warnings):
	// 0.0.0.0/0, or a range that overlaps the overlay.
	Warnings []string `json:"warnings,omitempty"`
}

// PolicyChangesResponse answers POST /v1/policy-changes, one result per
// change in order.
type PolicyChangesResponse struct {
	Results []PolicyChangeResult `json:"results"`
}

// KeyringRequest is the body of POST /v1/cluster-keys: an operator-signed
// keyring operation, or an unsigned one (no Sig) for the agent to sign with
// its own operator key. It has store.KeyringOp's fields (mesh/store), so
// that the agent and the CLI's signer convert between the two (a field
// added to one alone fails to compile there).
type KeyringRequest struct {
	Op     string            `json:"op"`
	Key    []byte            `json:"key,omitempty"`    // install, use: 32 bytes
	KeyID  string            `json:"key_id,omitempty"` // remove: fingerprint of the key
	Stamp  uint64            `json:"t"`                // orders operations; wall-clock ns of the signer
	Signer ed25519.PublicKey `json:"k"`
	Sig    []byte            `json:"g"`
}

// KeyringStatus answers GET /v1/cluster-keys.
type KeyringStatus struct {
	Keys    []string `json:"keys"` // fingerprints, primary first
	Primary string   `json:"primary"`
}
