// Package mesh is weft's control plane: memberlist membership with encrypted
// gossip, node metadata (WireGuard key and port, subnet lease, features,
// version), subnet leases, and the transport (gossip, push/pull,
// anti-entropy batches) of the replicated state, which package store
// (mesh/store) holds: the endpoint registry, the policy set and routes,
// their merge rules, signatures, encoding and state.json.
//
// Locking: a Mesh has two mutexes, always taken in this order:
//
//	persistMu (serialises writes of the state files)
//	mu        (all in-memory state, the store included)
//
// Nothing calls into memberlist (Join, UpdateNode, Members, Leave, ...) or a
// Listener while holding mu: memberlist calls the delegates, which take mu,
// with its own locks held. Listeners are called from a dedicated goroutine,
// so they may call any getter.
//
// # Behaviour
//
//   - Joining: New returns at once; a goroutine joins Config.Join with
//     exponential backoff (1s, 2s, ... JoinRetryMax), logging every failure,
//     until it succeeds, another cell joins this one, or Shutdown.
//   - Leases (lease.go; the rules in package lease): OverlayCIDR split
//     into /SubnetBits, index 0
//     reserved. A persisted lease (lease.json) is taken at once;
//     otherwise the first cell takes index 1
//     at once, a joining cell, after its first successful join (push/pull
//     synced), the first free subnet from index hash(name) mod the pool
//     upward, so that simultaneous joiners almost never pick the same one.
//     A freshly picked lease is tentative: announced, but not reported by
//     Subnet/WaitSubnet nor usable by endpoints, until it has settled: a
//     gossip wait (LeaseSettle, default GossipInterval × (2 + ⌈log4 N⌉),
//     300-600 ms up to 256 cells) and then push/pulls with a seed and a
//     random other member brought no older claim. A claim still in gossip
//     when we picked, or one the seed had not heard of, thus wins without
//     harm. Conflicts: the older lease wins (tie: smaller name); the loser
//     re-picks (from a new hashed index) only if it has no local
//     endpoints, else it logs an error and keeps the subnet.
//   - Replicated state (package store; delegate.go): endpoints are written by
//     their owner only (highest owner sequence wins, deletions are
//     tombstones); entries outside the owner's subnet are rejected. Policies
//     are a CRDT keyed by Rule.Key() with hybrid-logical-clock stamps.
//     Each change is one gossip message, relayed by cells it is news to,
//     and is also sent at once to 3 random members (direct.go: memberlist
//     puts its own messages first in every packet, and a cell that has
//     just joined has one queued for every member); the full state travels
//     in push/pull. A cell's push/pull state is
//     authoritative for its own endpoints, so entries whose tombstones were
//     pruned cannot come back.
//   - Lease hold (lease.go): a dead or departed cell's lease stays reserved
//     for LeaseHold (24h) before another cell may take it, unless no
//     subnet is free; then the longest-dead lease is taken over (logged),
//     and the takeover beats the old lease if its holder returns. With no
//     dead lease either, LeaseError says the pool is exhausted. Members
//     reports a contested subnet only for its winner.
//   - Operator authority (package store; operator.go): every policy
//     change carries an ed25519 signature over {rule, present, stamp,
//     origin} and the signer's key; it is merged only if a
//     TrustedOperators key signed it (gossip, push/pull,
//     ApplyPolicyChange, state.json); refusals are counted
//     (RejectedPolicies) and logged, rate-limited.
//   - Keyring (keyring.go): signed install/use/remove operations on
//     memberlist's keyring, gossiped, carried in push/pull, applied in
//     stamp order and persisted in keyring.json (primary key first).
//   - Reconnect (run.go): every 2 s a few cells seen dead are joined
//     again, so a healed partition becomes one cluster by itself.
//   - Persistence (persist.go; state.json by package store): lease.json
//     and state.json (policies, own endpoints, lease records, counters),
//     written atomically with mode 0600 on every change, loaded by New: a
//     restarted cell enforces its last known policy even alone.
//
// memberlist v0.7.0 quirks handled here: Node.State is never set in events,
// so a leaving cell gossips a leave message first (others then report it
// as left, not dead), and suspicion is not observable (NodeSuspect is never
// reported); its broadcast queue can drop messages (hashicorp/memberlist#263),
// which a never-sent sentinel entry prevents.
package mesh
