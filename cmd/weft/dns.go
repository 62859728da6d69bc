package main

import (
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/cell"
)

// dnsFlags turns --dns-addr and --dns-upstream into cfg.
func dnsFlags(cfg *cell.Config, addr string, upstreams []string) error {
	cfg.DNSAddr = netip.Addr{}
	if addr != "" {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return fmt.Errorf("--dns-addr %q: %w", addr, err)
		}
		if !a.Is4() || !a.IsLinkLocalUnicast() {
			return fmt.Errorf("--dns-addr %v: want an IPv4 link-local address (169.254.0.0/16), like 169.254.0.2", a)
		}
		cfg.DNSAddr = a
	}
	switch {
	case len(upstreams) == 1 && upstreams[0] == "none":
		cfg.DNSUpstreams = []string{}
	case len(upstreams) > 0:
		cfg.DNSUpstreams = nil
		for _, u := range upstreams {
			ap, err := netip.ParseAddrPort(u)
			if err != nil {
				ip, err2 := netip.ParseAddr(u)
				if err2 != nil {
					return fmt.Errorf("--dns-upstream %q: want IP or IP:PORT", u)
				}
				ap = netip.AddrPortFrom(ip, 53)
			}
			cfg.DNSUpstreams = append(cfg.DNSUpstreams, ap.String())
		}
	}
	return nil
}
