package mesh

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/weft-net/weft/policy"
)

// bareMesh is a Mesh without memberlist, for the merge logic.
func bareMesh(name string) *Mesh {
	cfg, err := Config{Name: name, ClusterKey: testKey, StateDir: "unused"}.withDefaults()
	if err != nil {
		panic(err)
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	m := &Mesh{
		trusted:   map[string]bool{string(testOperator.Public().(ed25519.PublicKey)): true},
		recSeen:   map[string]time.Time{},
		outboxes:  map[string]*outbox{},
		cfg:       cfg,
		log:       cfg.Logger,
		st:        newState(name),
		nodes:     map[string]*member{},
		rejectLog: map[string]time.Time{},
		leaseWait: make(chan struct{}),
		queue:     &memberlist.TransmitLimitedQueue{NumNodes: func() int { return 1 }, RetransmitMult: 4},
	}
	m.queue.QueueBroadcast(sentinel{})
	return m
}

func TestPolicyMergeOrderIndependent(t *testing.T) {
	r := rule("a", "b", 80)
	w := toWire(r)
	msgs := []polEntry{
		{Rule: w, Present: true, Stamp: 100, Origin: "x"},
		{Rule: w, Present: false, Stamp: 100, Origin: "y"}, // same stamp: larger origin wins
		{Rule: w, Present: true, Stamp: 99, Origin: "z"},
		{Rule: toWire(rule("c", "d", 1)), Present: true, Stamp: 5, Origin: "x"},
		{Rule: toWire(rule("c", "d", 1)), Present: false, Stamp: 4, Origin: "y"},
	}
	want := ""
	for i := range 50 {
		m := bareMesh("n")
		for _, j := range rand.Perm(len(msgs)) {
			(*delegate)(m).NotifyMsg(encode(msgPolicy, signed(msgs[j])))
		}
		got := ruleKeys(m.Policies())
		if i == 0 {
			want = got
			if want != rule("c", "d", 1).Key() {
				t.Fatalf("policies %q, want only c>d", want)
			}
		} else if got != want {
			t.Fatalf("order-dependent result: %q vs %q", got, want)
		}
		if m.st.clock < 100 {
			t.Fatalf("clock %d did not observe received stamps", m.st.clock)
		}
	}
}

func TestClockMonotonic(t *testing.T) {
	s := newState("n")
	now := time.Unix(0, 1000)
	s.now = func() time.Time { return now }
	a := s.nextStamp()
	now = time.Unix(0, 10) // wall clock steps back
	b := s.nextStamp()
	s.observeStamp(5000)
	c := s.nextStamp()
	if !(a == 1000 && b == 1001 && c == 5001) {
		t.Fatalf("stamps %d %d %d", a, b, c)
	}
}

func TestOwnerAuthoritativeState(t *testing.T) {
	m := bareMesh("me")
	sub := netip.MustParsePrefix("10.255.7.0/24")
	m.st.leases["o"] = leaseRec{Node: "o", Subnet: sub, Time: 1, Seq: 1}
	ip := netip.MustParseAddr("10.255.7.9")
	d := (*delegate)(m)
	d.MergeRemoteState(encode(msgFull, fullState{From: "o", Seq: 10,
		Endpoints: []epEntry{{Owner: "o", IP: ip, App: "app", Seq: 5}}}), false)
	if got := endpointSet(m.Endpoints()); got != "10.255.7.9=app/@o" {
		t.Fatalf("endpoints %q", got)
	}
	// The owner no longer lists it (tombstone pruned there): gone.
	d.MergeRemoteState(encode(msgFull, fullState{From: "o", Seq: 20}), false)
	if got := endpointSet(m.Endpoints()); got != "" {
		t.Fatalf("endpoints after owner dropped it: %q", got)
	}
	// A stale third party cannot bring it back.
	d.MergeRemoteState(encode(msgFull, fullState{From: "p", Seq: 99,
		Endpoints: []epEntry{{Owner: "o", IP: ip, App: "app", Seq: 5}}}), false)
	if got := endpointSet(m.Endpoints()); got != "" {
		t.Fatalf("stale entry resurrected: %q", got)
	}

	// Someone holds a live entry of ours we do not know: we tombstone it.
	mine := epEntry{Owner: "me", IP: netip.MustParseAddr("10.255.1.3"), App: "old", Seq: 1 << 62}
	d.NotifyMsg(encode(msgEndpoint, mine))
	got := m.st.eps[epKey{"me", mine.IP}]
	if !got.Deleted || got.Seq <= mine.Seq || m.pendingBroadcasts() != 1 {
		t.Fatalf("own stale entry: %+v, queued %d", got, m.pendingBroadcasts())
	}
}

func TestSubnets(t *testing.T) {
	m := bareMesh("n")
	for i, want := range map[int]string{0: "10.255.0.0/24", 1: "10.255.1.0/24", 255: "10.255.255.0/24"} {
		if got := m.subnetAt(i).String(); got != want {
			t.Errorf("subnetAt(%d) = %s, want %s", i, got, want)
		}
	}
	if m.numSubnets() != 256 || m.validSubnet(m.subnetAt(0)) || !m.validSubnet(m.subnetAt(1)) ||
		m.validSubnet(netip.MustParsePrefix("10.254.1.0/24")) || m.validSubnet(netip.MustParsePrefix("10.255.1.0/25")) {
		t.Error("validSubnet wrong")
	}
	m.cfg.OverlayCIDR, m.cfg.SubnetBits = netip.MustParsePrefix("fd00:1::/48"), 64
	if got := m.subnetAt(3).String(); got != "fd00:1:0:3::/64" {
		t.Errorf("IPv6 subnetAt(3) = %s", got)
	}
	m.cfg.SubnetBits = 56
	if got := m.subnetAt(2).String(); got != "fd00:1:0:200::/56" {
		t.Errorf("IPv6 /56 subnetAt(2) = %s", got)
	}
}

func TestConfigValidation(t *testing.T) {
	good := Config{Name: "n", ClusterKey: testKey, StateDir: "x"}
	if _, err := good.withDefaults(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Config){
		func(c *Config) { c.Name = "" },
		func(c *Config) { c.ClusterKey = testKey[:16] },
		func(c *Config) { c.StateDir = "" },
		func(c *Config) { c.SubnetBits = 16 },
		func(c *Config) { c.WGPublicKey = "nope" },
		func(c *Config) { c.WGPort = 70000 },
	}
	for i, f := range bad {
		c := good
		f(&c)
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("case %d: invalid config accepted", i)
		}
	}
}

func writeLease(t *testing.T, dir, subnet string, ts int64) {
	t.Helper()
	b, _ := json.Marshal(leaseFileData{Subnet: netip.MustParsePrefix(subnet), Time: ts})
	if err := os.WriteFile(filepath.Join(dir, leaseFileName), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLeaseConflict: two cells hold the same subnet; the younger lease
// re-picks when it has no containers and refuses to when it has.
func TestLeaseConflict(t *testing.T) {
	for _, withEndpoint := range []bool{false, true} {
		dirA, dirB := t.TempDir(), t.TempDir()
		writeLease(t, dirA, "10.255.5.0/24", 100)
		writeLease(t, dirB, "10.255.5.0/24", 200)
		a := startNode(t, "cell-a", nodeOpts{dir: dirA})
		h := newCapture()
		b := startNode(t, "cell-b", nodeOpts{dir: dirB, logger: slog.New(h)})
		if a.Subnet() != b.Subnet() {
			t.Fatal("persisted leases not taken")
		}
		if withEndpoint {
			if err := b.AddEndpoint(Endpoint{IP: netip.MustParseAddr("10.255.5.7"), App: "x"}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := b.ml.Join(a.joinAddr()); err != nil {
			t.Fatal(err)
		}
		if !withEndpoint {
			waitMembers(t, []*Mesh{a, b}, 2)
			if a.Subnet().String() != "10.255.5.0/24" {
				t.Fatalf("older lease lost: a=%v b=%v", a.Subnet(), b.Subnet())
			}
			continue
		}
		eventually(t, 3*time.Second, "conflict logged", func() error {
			if len(h.matching("ERROR", "SUBNET CONFLICT")) == 0 {
				return os.ErrNotExist
			}
			return nil
		})
		if b.Subnet().String() != "10.255.5.0/24" {
			t.Fatalf("cell with containers renumbered to %v", b.Subnet())
		}
	}
}

// TestPolicyDigest: the digest depends on the registers held, not on the
// order they came in or on the registers they replaced; a changed register
// changes its own bucket and no other.
func TestPolicyDigest(t *testing.T) {
	const n = 3000
	final := make([]polEntry, n)
	for i := range final {
		final[i] = polEntry{Rule: toWire(rule(fmt.Sprintf("src%d", i), "dst", uint16(1+i))), Present: i%3 != 0, Stamp: uint64(1000 + i), Origin: "cli@a"}
	}
	a, b := newState("a"), newState("b")
	for _, i := range rand.Perm(n) { // a: an older register first, then the final one
		p := final[i]
		old := p
		old.Stamp, old.Present, old.Origin = p.Stamp-1, !p.Present, "cli@b"
		a.putPolicy(p.Rule.rule().Key(), old)
		a.putPolicy(p.Rule.rule().Key(), p)
	}
	for _, i := range rand.Perm(n) { // b: the final ones only, another order
		b.putPolicy(final[i].Rule.rule().Key(), final[i])
	}
	if a.polSum != b.polSum {
		t.Fatal("same registers, different digests")
	}
	used := 0
	for _, x := range a.polSum {
		if x != 0 {
			used++
		}
	}
	if used < polBuckets*9/10 {
		t.Errorf("%d keys fill %d of %d buckets", n, used, polBuckets)
	}
	for _, change := range []func(p *polEntry){
		func(p *polEntry) { p.Present = !p.Present },
		func(p *polEntry) { p.Stamp++ },
		func(p *polEntry) { p.Origin = "cli@c" },
	} {
		c := newState("c")
		for _, p := range final {
			c.putPolicy(p.Rule.rule().Key(), p)
		}
		p := final[42]
		change(&p)
		k := p.Rule.rule().Key()
		c.putPolicy(k, p)
		var differ []int
		for i := range polBuckets {
			if c.polSum[i] != a.polSum[i] {
				differ = append(differ, i)
			}
		}
		if want := polBucket(k); !slices.Equal(differ, []int{want}) {
			t.Errorf("one register changed: buckets %v differ, want [%d]", differ, want)
		}
	}
}

// TestPoliciesShared: Policies returns one sorted slice until the set
// changes, and a change gives a new one without touching the old.
func TestPoliciesShared(t *testing.T) {
	m := bareMesh("n")
	merge := func(r policy.Rule, stamp uint64) {
		(*delegate)(m).NotifyMsg(encode(msgPolicy, signed(polEntry{Rule: toWire(r), Present: true, Stamp: stamp, Origin: "x"})))
	}
	merge(rule("b", "c", 1), 1)
	merge(rule("a", "c", 1), 2)
	p1, p2 := m.Policies(), m.Policies()
	if len(p1) != 2 || &p1[0] != &p2[0] {
		t.Fatalf("two calls without a change: %d rules, shared %v", len(p1), len(p2) > 0 && &p1[0] == &p2[0])
	}
	merge(rule("a", "b", 1), 3)
	p3 := m.Policies()
	if got, want := ruleKeys(p3), ruleKeys([]policy.Rule{rule("a", "b", 1), rule("a", "c", 1), rule("b", "c", 1)}); got != want {
		t.Errorf("after a change: %q, want %q", got, want)
	}
	if got, want := ruleKeys(p1), ruleKeys([]policy.Rule{rule("a", "c", 1), rule("b", "c", 1)}); got != want {
		t.Errorf("the earlier slice changed: %q, want %q", got, want)
	}
}
