package discovery

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var (
	b1 = Instance{IP: netip.MustParseAddr("10.255.2.2"), App: "appB", Name: "b-one"}
	b2 = Instance{IP: netip.MustParseAddr("10.255.3.7"), App: "appB", Name: "b-two"}
	a1 = Instance{IP: netip.MustParseAddr("10.255.1.2"), App: "appA", Name: "a-one"}
)

// serve starts s on loopback and returns its address.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	pc, ln, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // TCP on the UDP socket's port
	port := pc.LocalAddr().(*net.UDPAddr).Port
	ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx, pc, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return pc.LocalAddr().String()
}

func query(t *testing.T, addr, name string, qtype uint16, network string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return r
}

func addrsOf(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func TestResolve(t *testing.T) {
	s := New(Config{Domains: []string{"apps.internal", "other.internal"}})
	s.SetRecords([]Instance{b1, b2, a1}, []Route{{Host: "backend", Domain: "apps.internal", App: "appB"}})
	addr := serve(t, s)

	cases := []struct {
		name  string
		qtype uint16
		rcode int
		want  []string
	}{
		{"appB.apps.internal", dns.TypeA, dns.RcodeSuccess, []string{"10.255.2.2", "10.255.3.7"}},
		{"APPB.Apps.Internal", dns.TypeA, dns.RcodeSuccess, []string{"10.255.2.2", "10.255.3.7"}},
		{"appb.other.internal", dns.TypeA, dns.RcodeSuccess, []string{"10.255.2.2", "10.255.3.7"}},
		{"backend.apps.internal", dns.TypeA, dns.RcodeSuccess, []string{"10.255.2.2", "10.255.3.7"}},
		{"b-two.appB.apps.internal", dns.TypeA, dns.RcodeSuccess, []string{"10.255.3.7"}},
		{"0.appB.apps.internal", dns.TypeA, dns.RcodeSuccess, []string{"10.255.2.2"}},
		{"1.appB.apps.internal", dns.TypeA, dns.RcodeSuccess, []string{"10.255.3.7"}},
		{"appA.apps.internal", dns.TypeAAAA, dns.RcodeSuccess, nil}, // NODATA
		{"nope.apps.internal", dns.TypeA, dns.RcodeNameError, nil},
		{"2.appB.apps.internal", dns.TypeA, dns.RcodeNameError, nil},
		{"apps.internal", dns.TypeA, dns.RcodeNameError, nil},
		{"example.com", dns.TypeA, dns.RcodeRefused, nil}, // no upstreams
	}
	for _, c := range cases {
		r := query(t, addr, c.name, c.qtype, "udp")
		got := addrsOf(r)
		slices.Sort(got)
		if r.Rcode != c.rcode || !slices.Equal(got, c.want) {
			t.Errorf("%s %s: rcode %s answers %v, want %s %v", c.name, dns.TypeToString[c.qtype],
				dns.RcodeToString[r.Rcode], got, dns.RcodeToString[c.rcode], c.want)
		}
		for _, rr := range r.Answer {
			if rr.Header().Ttl == 0 || rr.Header().Ttl > 5 {
				t.Errorf("%s: TTL %d, want 1-5 s", c.name, rr.Header().Ttl)
			}
		}
	}
	// Shuffled: both orders show up.
	orders := map[string]bool{}
	for i := 0; i < 64 && len(orders) < 2; i++ {
		orders[strings.Join(addrsOf(query(t, addr, "appB.apps.internal", dns.TypeA, "udp")), ",")] = true
	}
	if len(orders) != 2 {
		t.Errorf("answers are not shuffled: saw only %v", orders)
	}
	// Names follow the registry.
	s.SetRecords([]Instance{b2}, nil)
	if got := addrsOf(query(t, addr, "appB.apps.internal", dns.TypeA, "udp")); !slices.Equal(got, []string{"10.255.3.7"}) {
		t.Errorf("after removing b-one: %v", got)
	}
	if r := query(t, addr, "backend.apps.internal", dns.TypeA, "udp"); r.Rcode != dns.RcodeNameError {
		t.Errorf("unmapped route still answers: %v", r)
	}
}

func TestForwardAndRefuse(t *testing.T) {
	upstream := New(Config{Domains: []string{"example.test"}})
	upstream.SetRecords([]Instance{{IP: netip.MustParseAddr("192.0.2.1"), App: "www"}}, nil)
	upAddr := serve(t, upstream)
	s := New(Config{Upstreams: []string{upAddr}})
	addr := serve(t, s)
	r := query(t, addr, "www.example.test", dns.TypeA, "udp")
	if got := addrsOf(r); !slices.Equal(got, []string{"192.0.2.1"}) {
		t.Fatalf("forwarded answer: %v %v", dns.RcodeToString[r.Rcode], got)
	}
	if s.Stats().Forwarded.Load() != 1 {
		t.Fatalf("forwarded = %d", s.Stats().Forwarded.Load())
	}
}

func TestBadQueries(t *testing.T) {
	s := New(Config{})
	addr := serve(t, s)
	c := &dns.Client{Timeout: 2 * time.Second}

	two := new(dns.Msg).SetQuestion("a.apps.internal.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	if r, _, err := c.Exchange(two, addr); err != nil || r.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %v %v", r, err)
	}
	notify := new(dns.Msg).SetNotify("apps.internal.")
	if r, _, err := c.Exchange(notify, addr); err != nil || r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("notify: %v %v", r, err)
	}
	// Garbage is dropped, and the server still answers afterwards.
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte{0x13, 0x37, 0xff})
	conn.Write(make([]byte, 4000))
	conn.Close()
	if r := query(t, addr, "x.apps.internal", dns.TypeA, "udp"); r.Rcode != dns.RcodeNameError {
		t.Errorf("after garbage: %v", r)
	}
}

func TestTruncation(t *testing.T) {
	s := New(Config{})
	var many []Instance
	for i := range 100 {
		many = append(many, Instance{IP: netip.AddrFrom4([4]byte{10, 255, 1, byte(i + 2)}), App: "big", Name: fmt.Sprint(i)})
	}
	s.SetRecords(many, nil)
	addr := serve(t, s)
	udp := query(t, addr, "big.apps.internal", dns.TypeA, "udp")
	if !udp.Truncated || len(udp.Answer) >= 100 {
		t.Errorf("UDP answer of 100 A records: truncated=%v, %d answers", udp.Truncated, len(udp.Answer))
	}
	if tcp := query(t, addr, "big.apps.internal", dns.TypeA, "tcp"); len(tcp.Answer) != 100 {
		t.Errorf("TCP answer: %d records, want 100", len(tcp.Answer))
	}
}

func TestAllowDrops(t *testing.T) {
	s := New(Config{Allow: func(a netip.Addr) bool { return false }})
	s.SetRecords([]Instance{b1}, nil)
	addr := serve(t, s)
	c := &dns.Client{Timeout: 300 * time.Millisecond}
	if r, _, err := c.Exchange(new(dns.Msg).SetQuestion("appb.apps.internal.", dns.TypeA), addr); err == nil {
		t.Fatalf("a client Allow rejects got an answer: %v", r)
	}
	if s.Stats().Dropped.Load() == 0 {
		t.Fatal("drop not counted")
	}
}

// fakeWriter is a dns.ResponseWriter that keeps the last message.
type fakeWriter struct {
	msg  *dns.Msg
	addr net.Addr
}

func (w *fakeWriter) LocalAddr() net.Addr         { return w.addr }
func (w *fakeWriter) RemoteAddr() net.Addr        { return w.addr }
func (w *fakeWriter) WriteMsg(m *dns.Msg) error   { w.msg = m; return nil }
func (w *fakeWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *fakeWriter) Close() error                { return nil }
func (w *fakeWriter) TsigStatus() error           { return nil }
func (w *fakeWriter) TsigTimersOnly(bool)         {}
func (w *fakeWriter) Hijack()                     {}

func FuzzServeDNS(f *testing.F) {
	for _, name := range []string{"appb.apps.internal.", "0.appb.apps.internal.", "x.example.com.", "."} {
		b, _ := new(dns.Msg).SetQuestion(name, dns.TypeA).Pack()
		f.Add(b)
	}
	s := New(Config{})
	s.SetRecords([]Instance{b1, b2, a1}, []Route{{Host: "h", Domain: "apps.internal", App: "appB"}})
	w := &fakeWriter{addr: &net.UDPAddr{IP: net.IPv4(10, 255, 1, 2), Port: 5353}}
	f.Fuzz(func(t *testing.T, b []byte) {
		m := new(dns.Msg)
		if m.Unpack(b) != nil {
			return // the server drops what does not unpack
		}
		w.msg = nil
		s.ServeDNS(w, m)
		if w.msg == nil {
			t.Fatal("no answer")
		}
		if _, err := w.msg.Pack(); err != nil {
			t.Fatalf("answer does not pack: %v", err)
		}
	})
}

// BenchmarkServeDNS measures the handler on one core: queries/s for an app
// with 4 instances among 1000 apps.
func BenchmarkServeDNS(b *testing.B) {
	s := New(Config{})
	var insts []Instance
	for i := range 4000 {
		insts = append(insts, Instance{IP: netip.AddrFrom4([4]byte{10, 255, byte(i / 250), byte(i%250 + 2)}), App: fmt.Sprintf("app%d", i%1000), Name: fmt.Sprint(i)})
	}
	s.SetRecords(insts, nil)
	q := new(dns.Msg).SetQuestion("app7.apps.internal.", dns.TypeA)
	w := &fakeWriter{addr: &net.UDPAddr{IP: net.IPv4(10, 255, 1, 2), Port: 5353}}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s.ServeDNS(w, q)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
	if len(w.msg.Answer) != 4 {
		b.Fatalf("%d answers", len(w.msg.Answer))
	}
}
