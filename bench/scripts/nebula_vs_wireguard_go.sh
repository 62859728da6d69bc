#!/bin/bash
# nebula_vs_wireguard_go.sh: single-stream iperf3 through stock nebula and
# through plain wireguard-go (rung b's bench/internal/plainwg), each between
# two network namespaces over a veth pair, alternating, ROUNDS times.
# docs/performance.md ("The bar's reference") has the figures.
#
# Needs root, iperf3 and wg (apt-get install iperf3 wireguard-tools) and
# nebula + nebula-cert (go install
# github.com/slackhq/nebula/cmd/{nebula,nebula-cert}@v1.11.0; later versions
# need a newer Go). Run from the repository root:
#
#	bash bench/scripts/nebula_vs_wireguard_go.sh [ROUNDS]
#
# Namespaces wxn<pid>-{a,b,c,d}, underlay 198.18.0.231-242, overlay
# 10.255.245.0/24 and 10.255.246.0/24; everything is removed on exit.
set -euo pipefail
ROUNDS=${1:-4}
NEBULA=${NEBULA:-$(go env GOPATH)/bin/nebula}
NEBULA_CERT=${NEBULA_CERT:-$(go env GOPATH)/bin/nebula-cert}
for t in iperf3 wg python3 "$NEBULA" "$NEBULA_CERT"; do
	command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 1; }
done
P=wxn$$
W=$(mktemp -d)
PIDS=""
cleanup() {
	for n in b d; do
		for pid in $(ip netns pids $P-$n 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
	done
	for pid in $PIDS; do kill "$pid" 2>/dev/null || true; done
	sleep 0.5
	for n in a b c d; do ip netns del $P-$n 2>/dev/null || true; done
	rm -rf "$W"
}
trap cleanup EXIT
for n in a b c d; do ip netns add $P-$n; ip -n $P-$n link set lo up; done
veth() { # ns1 ns2 ip1 ip2
	ip link add $P-v$1 netns $P-$1 type veth peer name $P-v$2 netns $P-$2
	ip -n $P-$1 addr add $3/24 dev $P-v$1; ip -n $P-$1 link set $P-v$1 up
	ip -n $P-$2 addr add $4/24 dev $P-v$2; ip -n $P-$2 link set $P-v$2 up
}
veth a b 198.18.0.231 198.18.0.232
veth c d 198.18.0.241 198.18.0.242

# nebula between a and b (firewall on, allowing everything; MTU as weft's).
"$NEBULA_CERT" ca -name weftbench -out-crt $W/ca.crt -out-key $W/ca.key
for s in a b; do
	i=$([ $s = a ] && echo 1 || echo 2); peer=$([ $s = a ] && echo 2 || echo 1)
	"$NEBULA_CERT" sign -ca-crt $W/ca.crt -ca-key $W/ca.key -name $s -networks 10.255.246.$i/24 \
		-out-crt $W/$s.crt -out-key $W/$s.key
	cat > $W/$s.yml <<YML
pki: {ca: $W/ca.crt, cert: $W/$s.crt, key: $W/$s.key}
static_host_map: {"10.255.246.$peer": ["198.18.0.23$peer:4242"]}
lighthouse: {am_lighthouse: false, hosts: []}
listen: {host: 0.0.0.0, port: 4242}
punchy: {punch: false}
tun: {dev: neb$s, mtu: 1420}
logging: {level: warning}
firewall:
  outbound: [{port: any, proto: any, host: any}]
  inbound: [{port: any, proto: any, host: any}]
YML
	ip netns exec $P-$s "$NEBULA" -config $W/$s.yml >$W/$s.log 2>&1 &
	PIDS="$PIDS $!"
done

# plain wireguard-go between c and d.
(cd bench/internal/plainwg && go build -o $W/plainwg .)
hex() { echo "$1" | base64 -d | od -An -tx1 | tr -d ' \n'; }
kc=$(wg genkey); kd=$(wg genkey)
for s in c d; do
	if [ $s = c ]; then k=$kc; pub=$(echo $kd | wg pubkey); ep=198.18.0.242; me=1; peer=2
	else k=$kd; pub=$(echo $kc | wg pubkey); ep=198.18.0.241; me=2; peer=1; fi
	printf "private_key=%s\nlisten_port=51820\npublic_key=%s\nendpoint=%s:51820\nallowed_ip=10.255.245.%s/32\n" \
		"$(hex $k)" "$(hex $pub)" $ep $peer | \
		ip netns exec $P-$s $W/plainwg -iface pw$s -addr 10.255.245.$me/24 -mtu 1420 >$W/$s.log 2>&1 &
	PIDS="$PIDS $!"
done
sleep 2
ip netns exec $P-b iperf3 -s -D -p 5201
ip netns exec $P-d iperf3 -s -D -p 5202
sleep 0.5
gbit() { python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
ip netns exec $P-a iperf3 -c 10.255.246.2 -p 5201 -t 1 >/dev/null 2>&1 || true # nebula handshake
for r in $(seq "$ROUNDS"); do
	n=$(ip netns exec $P-a iperf3 -c 10.255.246.2 -p 5201 -t 5 -O 1 -J | gbit)
	w=$(ip netns exec $P-c iperf3 -c 10.255.245.2 -p 5202 -t 5 -O 1 -J | gbit)
	echo "round $r: nebula $n Gbit/s, wireguard-go $w Gbit/s"
done
