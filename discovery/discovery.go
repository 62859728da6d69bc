// Package discovery answers DNS inside containers: APP.apps.internal
// resolves to the overlay IPs of APP's live instances, as Cloud Foundry's
// bosh-dns does for internal routes. Names grant nothing: the policy engine
// still decides who may connect.
//
// The server is told the records (SetRecords) whenever the replicated
// registry changes; queries read an immutable index behind an atomic pointer
// and never wait for the control plane.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Instance is one live container.
type Instance struct {
	IP   netip.Addr
	App  string
	Name string // container id
}

// Route maps HOST.DOMAIN to the instances of App (cf map-route APP DOMAIN
// --hostname HOST). Every app also has the implicit route APP.DOMAIN in
// every internal domain.
type Route struct {
	Host   string
	Domain string
	App    string
}

// Config configures a Server. Not modified after New.
type Config struct {
	Domains   []string // internal domains; default apps.internal
	Upstreams []string // "IP:PORT" resolvers for other names; none: REFUSED
	TTL       uint32   // seconds; default 3
	// Allow reports whether a client may query. nil allows everyone. The
	// agent allows only its own containers.
	Allow  func(netip.Addr) bool
	Logger *slog.Logger
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Domains: []string{"apps.internal"}, TTL: 3}
}

// Stats are the server's counters.
type Stats struct {
	Queries   atomic.Uint64 // questions answered from the internal domains
	NXDomain  atomic.Uint64
	Forwarded atomic.Uint64
	Refused   atomic.Uint64
	Dropped   atomic.Uint64 // clients that Allow rejects: no answer at all
	Malformed atomic.Uint64 // FORMERR / NOTIMP answers
}

// Server is a DNS handler for the internal domains. ServeDNS is safe for
// concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	domains []string // lower-case FQDNs, e.g. "apps.internal."
	index   atomic.Pointer[index]
	client  *dns.Client
	stats   Stats
}

// index is an immutable snapshot of the records.
type index struct {
	names     map[string][]netip.Addr // "appb.apps.internal." -> instances, sorted by name
	instances map[string]netip.Addr   // "c1.appb.apps.internal." and "0.appb.apps.internal."
}

// New returns a server with no records.
func New(cfg Config) *Server {
	d := DefaultConfig()
	if len(cfg.Domains) == 0 {
		cfg.Domains = d.Domains
	}
	if cfg.TTL == 0 {
		cfg.TTL = d.TTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "dns"), client: &dns.Client{Timeout: 2 * time.Second}}
	for _, dom := range cfg.Domains {
		s.domains = append(s.domains, strings.ToLower(dns.Fqdn(dom)))
	}
	s.index.Store(&index{names: map[string][]netip.Addr{}, instances: map[string]netip.Addr{}})
	return s
}

// Stats returns the counters.
func (s *Server) Stats() *Stats { return &s.stats }

// SetRecords replaces the records: every instance is reachable as
// APP.DOMAIN in every internal domain and as HOST.DOMAIN for each route to
// its app; each instance also as NAME.APP.DOMAIN and INDEX.APP.DOMAIN
// (its position among the app's instances ordered by name).
func (s *Server) SetRecords(instances []Instance, routes []Route) {
	byApp := make(map[string][]Instance)
	for _, in := range instances {
		if in.IP.IsValid() && in.App != "" {
			byApp[in.App] = append(byApp[in.App], in)
		}
	}
	ix := &index{names: map[string][]netip.Addr{}, instances: map[string]netip.Addr{}}
	add := func(fqdn string, insts []Instance) {
		for i, in := range insts {
			ix.names[fqdn] = append(ix.names[fqdn], in.IP)
			ix.instances[strconv.Itoa(i)+"."+fqdn] = in.IP
			if in.Name != "" {
				ix.instances[strings.ToLower(in.Name)+"."+fqdn] = in.IP
			}
		}
	}
	for app, insts := range byApp {
		slices.SortFunc(insts, func(a, b Instance) int { return strings.Compare(a.Name, b.Name) })
		for _, dom := range s.domains {
			add(strings.ToLower(app)+"."+dom, insts)
		}
	}
	for _, r := range routes {
		dom := strings.ToLower(dns.Fqdn(r.Domain))
		if !slices.Contains(s.domains, dom) || r.Host == "" {
			continue
		}
		name := strings.ToLower(r.Host) + "." + dom
		if _, implicit := ix.names[name]; implicit {
			continue // an app of that name owns it
		}
		add(name, byApp[r.App])
	}
	s.index.Store(ix)
}

// internal reports whether name is in (or is) an internal domain.
func (s *Server) internal(name string) bool {
	for _, d := range s.domains {
		if name == d || strings.HasSuffix(name, "."+d) {
			return true
		}
	}
	return false
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if s.cfg.Allow != nil {
		if ap, err := netip.ParseAddrPort(w.RemoteAddr().String()); err != nil || !s.cfg.Allow(ap.Addr().Unmap()) {
			s.stats.Dropped.Add(1)
			return
		}
	}
	m := s.answer(r)
	if m == nil {
		m = s.forward(r)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = max(int(o.UDPSize()), dns.MinMsgSize)
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// answer answers a query for an internal name, FORMERR/NOTIMP for a query
// it cannot take, or nil for a name to forward.
func (s *Server) answer(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	if r.Opcode != dns.OpcodeQuery {
		s.stats.Malformed.Add(1)
		return m.SetRcode(r, dns.RcodeNotImplemented)
	}
	if len(r.Question) != 1 {
		s.stats.Malformed.Add(1)
		return m.SetRcodeFormatError(r)
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	if !s.internal(name) {
		return nil
	}
	s.stats.Queries.Add(1)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = len(s.cfg.Upstreams) > 0
	ix := s.index.Load()
	var addrs []netip.Addr
	if all, ok := ix.names[name]; ok {
		addrs = slices.Clone(all)
		rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	} else if one, ok := ix.instances[name]; ok {
		addrs = []netip.Addr{one}
	} else {
		s.stats.NXDomain.Add(1)
		m.Rcode = dns.RcodeNameError
		return m
	}
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		return m // NODATA
	}
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: s.cfg.TTL}
	for _, a := range addrs {
		switch {
		case a.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	return m
}

// forward asks the upstream resolvers, or refuses when there are none.
func (s *Server) forward(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	if len(s.cfg.Upstreams) == 0 {
		s.stats.Refused.Add(1)
		return m.SetRcode(r, dns.RcodeRefused)
	}
	s.stats.Forwarded.Add(1)
	for _, up := range s.cfg.Upstreams {
		resp, _, err := s.client.Exchange(r, up)
		if err == nil && resp != nil && resp.Truncated {
			tcp := &dns.Client{Net: "tcp", Timeout: s.client.Timeout}
			resp, _, err = tcp.Exchange(r, up)
		}
		if err == nil && resp != nil {
			resp.Id = r.Id
			return resp
		}
	}
	return m.SetRcode(r, dns.RcodeServerFailure)
}

// Listen opens the UDP and TCP sockets for addr.
func Listen(addr netip.AddrPort) (net.PacketConn, net.Listener, error) {
	pc, err := net.ListenPacket("udp", addr.String())
	if err != nil {
		return nil, nil, fmt.Errorf("dns: listen udp %v: %w", addr, err)
	}
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("dns: listen tcp %v: %w", addr, err)
	}
	return pc, ln, nil
}

// Serve answers on pc (UDP) and ln (TCP) until ctx is done, then closes
// both.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	addr := pc.LocalAddr()
	udp := &dns.Server{PacketConn: pc, Handler: s}
	tcp := &dns.Server{Listener: ln, Handler: s, ReadTimeout: 5 * time.Second, IdleTimeout: func() time.Duration { return 5 * time.Second }}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Go(func() { errs[0] = udp.ActivateAndServe() })
	wg.Go(func() { errs[1] = tcp.ActivateAndServe() })
	s.log.Info("serving DNS", "addr", addr, "domains", s.cfg.Domains, "upstreams", s.cfg.Upstreams)
	<-ctx.Done()
	udp.Shutdown()
	tcp.Shutdown()
	wg.Wait()
	return errors.Join(errs...)
}

// ReadResolvConf returns the nameservers of a resolv.conf as "IP:53",
// leaving out addr itself (a cell must not forward to itself).
func ReadResolvConf(path string, self netip.Addr) []string {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range cc.Servers {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip == self {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, 53).String())
	}
	return out
}
