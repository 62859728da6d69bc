#!/bin/bash
# verdict_vs_peers.sh: weft's verdict micro-benchmarks and the same for
# nebula's firewall, the peer that tracks every flow, and (TAILSCALE_SRC
# set) tailscale's packet filter, in turn, ROUNDS times, one core (-cpu 1). Both judge one parsed packet with 10k rules and
# 100k flows tracked: the first packet of a new allowed TCP flow
# (BenchmarkVerdict/new against BenchmarkPeerFirewallNew) and a packet of
# a tracked one (BenchmarkVerdict/established against
# BenchmarkPeerFirewallEstablished). BenchmarkRandomRead records the
# host's memory latency in each round (the cold bucket of a new flow is
# one random read within 4 MiB). The nebula side is
# nebula_firewall_peer_test.go.txt, copied into a nebula checkout for the
# run (it builds nebula's HostInfo as nebula's own tests do). Tailscale's
# filter tracks no TCP flow and at most 512 UDP flows: its rows are
# BenchmarkPeerUDPNewFlowOut (tailscale_filter_peer_test.go.txt: a new UDP
# flow recorded, the LRU evicting) and its own BenchmarkFilter/tcp4_syn_in
# (a SYN checked against its small test filter, nothing recorded).
# docs/policy.md ("Numbers") has the figures.
#
# NEBULA_SRC is a nebula checkout (git clone
# https://github.com/slackhq/nebula; measured at 9c5d7016), TAILSCALE_SRC
# a tailscale one (measured at de9ec7ee2; optional). Run from the
# repository root; -save keeps the run under bench/results:
#
#	NEBULA_SRC=/path/to/nebula TAILSCALE_SRC=/path/to/tailscale \
#		bash bench/scripts/verdict_vs_peers.sh [ROUNDS] \
#		| go run ./bench/cmd/benchtable -save bench/results -cmd "verdict_vs_peers.sh"
set -euo pipefail
ROUNDS=${1:-5}
SRC=${NEBULA_SRC:?set NEBULA_SRC to a nebula checkout}
[ -f "$SRC/firewall.go" ] || { echo "NEBULA_SRC=$SRC: no firewall.go, not a nebula checkout" >&2; exit 1; }
TS=${TAILSCALE_SRC:-}
[ -z "$TS" ] || [ -d "$TS/wgengine/filter" ] || { echo "TAILSCALE_SRC=$TS: no wgengine/filter, not a tailscale checkout" >&2; exit 1; }
PEER=$SRC/weft_verdict_peer_test.go
TSPEER=${TS:+$TS/wgengine/filter/weft_verdict_peer_test.go}
W=$(mktemp -d)
trap 'rm -rf "$W" "$PEER" $TSPEER' EXIT
cp bench/scripts/nebula_firewall_peer_test.go.txt "$PEER"
go test -c -o "$W/weft.test" ./policy/engine/
(cd "$SRC" && go test -c -o "$W/nebula.test" .)
if [ -n "$TS" ]; then
	cp bench/scripts/tailscale_filter_peer_test.go.txt "$TSPEER"
	(cd "$TS" && go test -c -o "$W/tailscale.test" ./wgengine/filter/)
fi
for i in $(seq "$ROUNDS"); do
	"$W/weft.test" -test.run '^$' -test.bench 'BenchmarkVerdict$/(new|established)/rules=10000$|BenchmarkRandomRead' \
		-test.cpu 1 -test.count 1 | grep '^Benchmark'
	(cd "$SRC" && "$W/nebula.test" -test.run '^$' -test.bench 'BenchmarkPeerFirewall' \
		-test.cpu 1 -test.count 1 | grep '^Benchmark')
	if [ -n "$TS" ]; then
		"$W/tailscale.test" -test.run '^$' -test.bench 'BenchmarkPeerUDPNewFlowOut|BenchmarkFilter$/tcp4_syn_in' \
			-test.cpu 1 -test.count 1 | grep '^Benchmark'
	fi
done
