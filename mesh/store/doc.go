// Package store is the replicated state of a weft cell, apart from the
// membership that carries it: the endpoint registry, the policy set
// (app, egress and ingress rules), the internal routes and the cells'
// lease records, as CRDT registers with their merge rules; the operator
// signatures that every policy, route and keyring change carries and their
// verification; the wire encoding of the messages and push/pull states
// that carry them, decoded with bounds; and state.json.
//
// It does not import memberlist and sends nothing: a merge reports what
// changed and which messages to gossip on (Result); package mesh queues
// them, runs the push/pull and owns the subnet leases (which cell holds
// which subnet), the keyring of the gossip and the node metadata.
//
// Locking: a Store is guarded by its owner's mutex (Mesh.mu); nothing in
// it locks, except the rejection counters and their log (RejectSigned,
// RejectedPolicies, RejectedEndpoints), which may be used without it.
// The trusted operator keys are read-only after New, so Verify,
// CheckPolicyChange and CheckRouteChange need no lock either.
package store
