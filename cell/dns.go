package cell

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/weft-net/weft/discovery"
)

// DefaultDNSAddr is where containers find the cell's DNS server: a
// link-local address on weft0, reached through the veth gateway like any
// other address (as Cloud Foundry's bosh-dns at 169.254.0.2).
var DefaultDNSAddr = netip.MustParseAddr("169.254.0.2")

// NetnsEtcDir is where `ip netns exec` finds per-namespace /etc files.
const NetnsEtcDir = "/etc/netns"

// agentDNS is the agent's service-discovery state.
type agentDNS struct {
	srv      *discovery.Server
	localIPs atomic.Pointer[map[netip.Addr]bool] // clients allowed to query: this cell's containers
}

// startDNS puts the DNS address on weft0 and serves the internal domains on
// it until ctx is done. Only this cell's containers get answers.
func (a *Agent) startDNS(ctx context.Context) error {
	if !a.cfg.DNSAddr.IsValid() {
		return nil
	}
	upstreams := a.cfg.DNSUpstreams
	if upstreams == nil {
		upstreams = a.usableUpstreams(discovery.ReadResolvConf("/etc/resolv.conf", a.cfg.DNSAddr))
	}
	cfg := discovery.DefaultConfig()
	if len(a.cfg.InternalDomains) > 0 {
		cfg.Domains = a.cfg.InternalDomains
	}
	cfg.Upstreams = upstreams
	cfg.Logger = a.log
	cfg.Allow = func(ip netip.Addr) bool {
		m := a.dns.localIPs.Load()
		return m != nil && (*m)[ip]
	}
	srv := discovery.New(cfg)

	a.mu.Lock()
	err := a.ov.AddServiceAddr(a.cfg.DNSAddr)
	a.dns.srv = srv
	a.reconcileLocked() // the records, from the last reconcile's mesh state
	a.mu.Unlock()
	if err != nil {
		return err
	}
	pc, ln, err := discovery.Listen(netip.AddrPortFrom(a.cfg.DNSAddr, 53))
	if err != nil {
		return err
	}
	go func() {
		if err := srv.Serve(ctx, pc, ln); err != nil {
			a.log.Error("DNS server stopped", "err", err)
		}
	}()
	return nil
}

// usableUpstreams leaves out resolvers this cell cannot reach: an address
// inside the overlay would be routed into weft0 (and dropped, as no peer
// owns it), so forwarding to it could never work.
func (a *Agent) usableUpstreams(ups []string) []string {
	var out []string
	for _, u := range ups {
		ap, err := netip.ParseAddrPort(u)
		if err == nil && a.cfg.OverlayCIDR.Contains(ap.Addr()) {
			a.log.Warn("ignoring a resolver of /etc/resolv.conf inside the overlay; set --dns-upstream",
				"resolver", u, "overlay", a.cfg.OverlayCIDR)
			continue
		}
		out = append(out, u)
	}
	return out
}

// routes are the internal routes of the replicated state.
func (a *Agent) routes() []discovery.Route {
	var out []discovery.Route
	for _, r := range a.mesh.Routes() {
		out = append(out, discovery.Route{Host: r.Host, Domain: r.Domain, App: r.App})
	}
	return out
}

// writeResolvConf points container name at the cell's DNS server, where
// `ip netns exec` (and `weft run`) will find it.
func (a *Agent) writeResolvConf(name string) error {
	if !a.cfg.DNSAddr.IsValid() {
		return nil
	}
	dir := filepath.Join(NetnsEtcDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	conf := fmt.Sprintf("# written by weft for container %s\nnameserver %s\n", name, a.cfg.DNSAddr)
	return os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(conf), 0o644)
}

// removeResolvConf removes what writeResolvConf wrote.
func removeResolvConf(name string) {
	dir := filepath.Join(NetnsEtcDir, name)
	os.Remove(filepath.Join(dir, "resolv.conf"))
	os.Remove(dir) // only if empty
}
