package engine

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine/pkttest"
)

// naiveAllowed is the obvious implementation: a linear scan over rules and
// endpoints.
func naiveAllowed(rules []policy.Rule, eps []Endpoint, src, dst netip.Addr, proto policy.Protocol, dport uint16) bool {
	var srcApp, dstApp string
	dstLocal := false
	for _, ep := range eps { // later entries win, as in Compile
		if ep.IP == src {
			srcApp = ep.App
		}
		if ep.IP == dst {
			dstApp, dstLocal = ep.App, ep.Local
		}
	}
	if srcApp == "" || !dstLocal {
		return false
	}
	for _, r := range rules {
		if r.Validate() != nil {
			continue
		}
		if r.Source == srcApp && r.Destination == dstApp && (r.Protocol == proto || r.Protocol == policy.ProtoAll) &&
			(proto == policy.ProtoICMP || r.Ports.Contains(dport)) {
			return true
		}
	}
	return false
}

func TestOracle(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 42))
		apps := make([]string, 2+rng.IntN(20))
		for i := range apps {
			apps[i] = fmt.Sprintf("app%d", i)
		}
		var eps []Endpoint
		var ips []netip.Addr
		for i := range 5 + rng.IntN(40) {
			ip := netip.AddrFrom4([4]byte{10, 255, byte(rng.IntN(3)), byte(i)})
			if rng.IntN(4) == 0 {
				ip = netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(i)})
			}
			ips = append(ips, ip)
			eps = append(eps, Endpoint{IP: ip, App: apps[rng.IntN(len(apps))], Local: rng.IntN(2) == 0})
		}
		eps = append(eps, eps[rng.IntN(len(eps))]) // a duplicate
		eps[len(eps)-1].Local = !eps[len(eps)-1].Local
		ips = append(ips, netip.MustParseAddr("10.9.9.9")) // unregistered
		protos := []policy.Protocol{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoICMP}
		port := func() uint16 { return uint16(1 + rng.IntN(200)) }
		var rules []policy.Rule
		for range rng.IntN(300) {
			r := policy.Rule{Source: apps[rng.IntN(len(apps))], Destination: apps[rng.IntN(len(apps))], Protocol: protos[rng.IntN(3)]}
			if rng.IntN(8) == 0 {
				r.Protocol = policy.ProtoAll
			}
			if r.Protocol != policy.ProtoICMP {
				a, b := port(), port()
				r.Ports = policy.PortRange{Start: min(a, b), End: max(a, b)}
				if rng.IntN(3) == 0 {
					r.Ports.End = r.Ports.Start
				}
			}
			if rng.IntN(50) == 0 {
				r.Ports = policy.PortRange{Start: 9, End: 3} // invalid: ignored by both
			}
			if rng.IntN(50) == 0 {
				r.Protocol = 47 // invalid: ignored by both
			}
			rules = append(rules, r)
		}
		tab := Compile(TableConfig{Rules: rules, Endpoints: eps})
		e := NewEngine(Config{})
		e.SetTable(tab)
		for i := range 3000 {
			src, dst := ips[rng.IntN(len(ips))], ips[rng.IntN(len(ips))]
			proto, dport := protos[rng.IntN(3)], port()
			want := naiveAllowed(rules, eps, src, dst, proto, dport)
			if got := tab.Allowed(src, dst, proto, dport); got != want {
				t.Fatalf("seed %d: Allowed(%v, %v, %v, %d) = %v, want %v", seed, src, dst, proto, dport, got, want)
			}
			// The engine agrees on new flows (fresh source ports, so no
			// packet is the reply of an earlier one).
			if src.Is4() != dst.Is4() {
				continue
			}
			var pkt []byte
			sport := uint16(10000 + i)
			switch proto {
			case policy.ProtoTCP:
				pkt = syn(ap(src, sport), ap(dst, dport))
			case policy.ProtoUDP:
				pkt = pkttest.UDP(ap(src, sport), ap(dst, dport), nil)
			default:
				pkt = pkttest.ICMPEcho(src, dst, sport, 1, false)
			}
			if got := e.Inbound(pkt).Allowed(); got != want {
				t.Fatalf("seed %d: Inbound %v -> %v %v/%d allowed = %v, want %v", seed, src, dst, proto, dport, got, want)
			}
		}
	}
}
