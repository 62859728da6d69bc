package engine

import "iter"

// Verdict is the engine's decision for one packet.
type Verdict uint8

// Verdicts. Only Accept and AcceptLocal let a packet pass.
const (
	Accept                 Verdict = iota // deliver (Inbound) / send to WireGuard (Outbound)
	AcceptLocal                           // Outbound only: allowed, destination is a container on this cell: write it back into the TUN
	DropNoPolicy                          // new flow not allowed by any rule: answer with Reject
	DropRevoked                           // tracked flow whose allowing rule or endpoint is gone: answer with Reject; the entry is removed
	DropSpoofed                           // Outbound: source IP is not a registered local endpoint
	DropUnknownSource                     // Inbound: source IP not in the registry (and not a reply of a tracked flow)
	DropUnknownDestination                // Inbound/hairpin: destination is not a registered local endpoint
	DropMalformed                         // truncated or inconsistent headers
	DropUnsupported                       // not IP, a protocol other than tcp/udp/icmp, an ICMP type that is neither echo nor error
	DropConntrackFull                     // could not track the flow (not produced: a full table evicts instead)
	DropFragment                          // a later fragment whose first fragment was not allowed (or not seen, or forgotten)
	numVerdicts
)

var verdictNames = [numVerdicts]string{
	Accept:                 "accept",
	AcceptLocal:            "accept_local",
	DropNoPolicy:           "no_policy",
	DropRevoked:            "revoked",
	DropSpoofed:            "spoofed",
	DropUnknownSource:      "unknown_source",
	DropUnknownDestination: "unknown_destination",
	DropMalformed:          "malformed",
	DropUnsupported:        "unsupported",
	DropConntrackFull:      "conntrack_full",
	DropFragment:           "fragment",
}

// ParseVerdict returns the verdict named s (Verdict.String).
func ParseVerdict(s string) (Verdict, bool) {
	for v, name := range verdictNames {
		if name == s {
			return Verdict(v), true
		}
	}
	return 0, false
}

// String returns the verdict's metric label, e.g. "accept" or "no_policy".
func (v Verdict) String() string {
	if v < numVerdicts {
		return verdictNames[v]
	}
	return "invalid"
}

// Allowed reports whether the packet may pass (Accept or AcceptLocal).
func (v Verdict) Allowed() bool { return v == Accept || v == AcceptLocal }

// Reject reports whether the sender should be answered with
// [Engine.Reject]: DropNoPolicy, DropRevoked, and DropUnknownSource (a
// source in a peer's subnet that is not registered, or not yet: no rule can
// allow it, and the sender should hear "refused" at once rather than
// retransmit until the registry catches up).
func (v Verdict) Reject() bool {
	return v == DropNoPolicy || v == DropRevoked || v == DropUnknownSource
}

// Counters is a snapshot of an engine's counters.
type Counters struct {
	Verdicts       [numVerdicts]uint64 // packets by verdict, indexed by Verdict
	RejectsSent    uint64              // reject packets built by Reject
	RejectsLimited uint64              // rejects suppressed by the per-source rate limit
	Evictions      uint64              // live flows evicted from a full conntrack
	FlowLogLines   uint64              // flow log lines queued for the writer
	FlowLogDropped uint64              // flow log lines suppressed by the rate limit or a full queue
}

// All yields every verdict with its packet count, in Verdict order.
func (c Counters) All() iter.Seq2[Verdict, uint64] {
	return func(yield func(Verdict, uint64) bool) {
		for v, n := range c.Verdicts {
			if !yield(Verdict(v), n) {
				return
			}
		}
	}
}
