package mesh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

var testKey = bytes.Repeat([]byte{7}, 32)

// testOperator is the operator key every test node trusts and holds.
var testOperator = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))

// signed returns p signed by the test operator.
func signed(p store.PolicyReg) store.PolicyReg {
	c := store.PolicyChange{Present: p.Present, Stamp: p.Stamp, Origin: p.Origin}
	if p.Rule.IsEgress() {
		c.Egress = p.Rule.EgressRule()
	} else {
		c.Rule = p.Rule.Rule()
	}
	store.SignPolicyChange(&c, testOperator)
	return c.Reg()
}

// captureHandler records log records; safe for concurrent use.
type captureHandler struct {
	mu   *sync.Mutex
	recs *[]string
}

func newCapture() *captureHandler {
	return &captureHandler{mu: new(sync.Mutex), recs: new([]string)}
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.recs = append(*h.recs, r.Level.String()+" "+r.Message)
	return nil
}
func (h *captureHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *captureHandler) WithGroup(string) slog.Handler      { return h }

// matching returns the records at level lvl (or any, if "") containing s.
func (h *captureHandler) matching(lvl, s string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range *h.recs {
		if strings.Contains(r, s) && (lvl == "" || strings.HasPrefix(r, lvl+" ")) {
			out = append(out, r)
		}
	}
	return out
}

type countingListener struct {
	mu             sync.Mutex
	members, state int
}

func (l *countingListener) MembersChanged() { l.mu.Lock(); l.members++; l.mu.Unlock() }
func (l *countingListener) StateChanged()   { l.mu.Lock(); l.state++; l.mu.Unlock() }
func (l *countingListener) counts() (int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.members, l.state
}

type nodeOpts struct {
	noOperatorKey bool                // the node holds no operator private key
	trusted       []ed25519.PublicKey // nil: the test operator
	mutate        func(*Config)
	dir           string
	join          []string
	key           []byte
	logger        *slog.Logger
	l             Listener
}

func wgKey(name string) string {
	h := sha256.Sum256([]byte(name))
	return base64.StdEncoding.EncodeToString(h[:])
}

func wgPort(name string) int { return 51000 + int(name[len(name)-1]) }

// startNode starts a mesh on 127.0.0.1 with a kernel-chosen port; it is
// shut down when the test ends.
func startNode(t *testing.T, name string, o nodeOpts) *Mesh {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.BindAddr = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Join = o.join
	cfg.ClusterKey = testKey
	if o.key != nil {
		cfg.ClusterKey = o.key
	}
	cfg.StateDir = o.dir
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	cfg.WGPublicKey = wgKey(name)
	cfg.WGPort = wgPort(name)
	cfg.Logger = o.logger
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.TrustedOperators = o.trusted
	if cfg.TrustedOperators == nil {
		cfg.TrustedOperators = []ed25519.PublicKey{testOperator.Public().(ed25519.PublicKey)}
	}
	if !o.noOperatorKey {
		cfg.OperatorKey = testOperator
	}
	if o.mutate != nil {
		o.mutate(&cfg)
	}
	m, err := New(cfg, o.l)
	if err != nil {
		t.Fatalf("New(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return m
}

func (m *Mesh) joinAddr() []string { return []string{m.LocalAddr().String()} }

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v: %v", what, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cluster starts n nodes; node 0 is the first cell, the others join it.
func cluster(t *testing.T, n int) []*Mesh {
	t.Helper()
	ms := []*Mesh{startNode(t, "cell-0", nodeOpts{})}
	for i := 1; i < n; i++ {
		ms = append(ms, startNode(t, fmt.Sprintf("cell-%d", i), nodeOpts{join: ms[0].joinAddr()}))
	}
	waitMembers(t, ms, n)
	return ms
}

// waitMembers waits until every node sees want alive members with
// distinct leases.
func waitMembers(t *testing.T, ms []*Mesh, want int) {
	t.Helper()
	eventually(t, 5*time.Second, "membership converged", func() error {
		for _, m := range ms {
			alive := 0
			subnets := map[netip.Prefix]bool{}
			for _, n := range m.Members() {
				if n.State == NodeAlive && n.Subnet.IsValid() && !subnets[n.Subnet] {
					alive++
				}
				subnets[n.Subnet] = true
			}
			if alive != want {
				return fmt.Errorf("%s sees %d alive leased members, want %d: %v", m.cfg.Name, alive, want, m.Members())
			}
		}
		return nil
	})
}

func rule(src, dst string, port uint16) policy.Rule {
	return policy.Rule{Source: src, Destination: dst, Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: port, End: port}}
}

func ruleKeys(rs []policy.Rule) string {
	ks := make([]string, len(rs))
	for i, r := range rs {
		ks[i] = r.Key()
	}
	return strings.Join(ks, ",")
}

// waitPolicies waits until every node has exactly the rules want.
func waitPolicies(t *testing.T, ms []*Mesh, want ...policy.Rule) {
	t.Helper()
	w := slices.Clone(want)
	policy.SortRules(w)
	eventually(t, 3*time.Second, "policies converged", func() error {
		for _, m := range ms {
			if got := ruleKeys(m.Policies()); got != ruleKeys(w) {
				return fmt.Errorf("%s has [%s], want [%s]", m.cfg.Name, got, ruleKeys(w))
			}
		}
		return nil
	})
}

func endpointSet(eps []Endpoint) string {
	s := make([]string, len(eps))
	for i, e := range eps {
		s[i] = fmt.Sprintf("%s=%s/%s@%s", e.IP, e.App, e.Name, e.Cell)
	}
	return strings.Join(s, ",")
}

func waitEndpoints(t *testing.T, ms []*Mesh, want string) {
	t.Helper()
	eventually(t, 3*time.Second, "endpoints converged", func() error {
		for _, m := range ms {
			if got := endpointSet(m.Endpoints()); got != want {
				return fmt.Errorf("%s has [%s], want [%s]", m.cfg.Name, got, want)
			}
		}
		return nil
	})
}

// ipIn returns the host with index i in p.
func ipIn(p netip.Prefix, i int) netip.Addr {
	a := p.Addr()
	for range i {
		a = a.Next()
	}
	return a
}
