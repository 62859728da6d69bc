// Package engine decides, for every packet between containers, whether it
// may pass: an endpoint registry (overlay IP -> app) and the rules of
// package policy compiled into an immutable [Table], a bounded connection
// tracker and the synthesis of reject packets (TCP RST, ICMP unreachable)
// for denied flows, flow logs and denial counts.
//
// The data path is [Engine.Outbound] (packets read from the TUN, leaving a
// local container) and [Engine.Inbound] (decrypted packets from a peer cell).
// Neither allocates, logs nor formats strings. Rules and endpoints are
// compiled off the packet path into a [Table] that is swapped in
// atomically with [Engine.SetTable]; tracked flows survive the swap and
// flows that the new table no longer allows are cut on their next packet.
package engine
