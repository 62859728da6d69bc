package store

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/policy"
)

// testOperator is the operator key every test store trusts.
var testOperator = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))

// newTestStore is a store of cell self that trusts testOperator.
func newTestStore(self string) *Store {
	return New(self, []ed25519.PublicKey{testOperator.Public().(ed25519.PublicKey)}, slog.New(slog.DiscardHandler))
}

// signed returns p signed by the test operator.
func signed(p PolicyReg) PolicyReg {
	c := PolicyChange{Present: p.Present, Stamp: p.Stamp, Origin: p.Origin}
	switch {
	case p.Rule.IsIngress():
		c.Ingress = p.Rule.IngressRule()
	case p.Rule.IsEgress():
		c.Egress = p.Rule.EgressRule()
	default:
		c.Rule = p.Rule.Rule()
	}
	SignPolicyChange(&c, testOperator)
	return c.Reg()
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

func TestPolicyMergeOrderIndependent(t *testing.T) {
	r := rule("a", "b", 80)
	w := ToWire(r)
	msgs := []PolicyReg{
		{Rule: w, Present: true, Stamp: 100, Origin: "x"},
		{Rule: w, Present: false, Stamp: 100, Origin: "y"}, // same stamp: larger origin wins
		{Rule: w, Present: true, Stamp: 99, Origin: "z"},
		{Rule: ToWire(rule("c", "d", 1)), Present: true, Stamp: 5, Origin: "x"},
		{Rule: ToWire(rule("c", "d", 1)), Present: false, Stamp: 4, Origin: "y"},
	}
	want := ""
	for i := range 50 {
		s := newTestStore("n")
		for _, j := range rand.Perm(len(msgs)) {
			var res Result
			s.MergePolicy(signed(msgs[j]), true, &res)
		}
		got := ruleKeys(s.Rules())
		if i == 0 {
			want = got
			if want != rule("c", "d", 1).Key() {
				t.Fatalf("policies %q, want only c>d", want)
			}
		} else if got != want {
			t.Fatalf("order-dependent result: %q vs %q", got, want)
		}
		if s.Clock() < 100 {
			t.Fatalf("clock %d did not observe received stamps", s.Clock())
		}
	}
}

func TestClockMonotonic(t *testing.T) {
	s := newTestStore("n")
	now := time.Unix(0, 1000)
	s.now = func() time.Time { return now }
	a := s.NextStamp()
	now = time.Unix(0, 10) // wall clock steps back
	b := s.NextStamp()
	s.ObserveStamp(5000)
	c := s.NextStamp()
	if !(a == 1000 && b == 1001 && c == 5001) {
		t.Fatalf("stamps %d %d %d", a, b, c)
	}
}

// TestEndpointMerge: an owner's records outside the subnet it holds are
// refused and counted; its push/pull view is authoritative for its own
// records; a live record of ours we do not know is tombstoned and
// announced.
func TestEndpointMerge(t *testing.T) {
	s := newTestStore("me")
	sub := netip.MustParsePrefix("10.255.7.0/24")
	subnetOf := func(owner string) (netip.Prefix, bool) { return sub, owner == "o" }
	ip := netip.MustParseAddr("10.255.7.9")
	var res Result
	s.MergeEndpoint(EndpointRec{Owner: "o", IP: netip.MustParseAddr("10.255.8.1"), App: "evil", Seq: 4}, true, &res, subnetOf)
	if s.NumEndpoints() != 0 || s.RejectedEndpoints() != 1 || len(res.Out) != 0 {
		t.Fatalf("outside the owner's subnet: %d stored, %d rejected, %d to send", s.NumEndpoints(), s.RejectedEndpoints(), len(res.Out))
	}
	s.MergeEndpoint(EndpointRec{Owner: "o", IP: ip, App: "app", Seq: 5}, true, &res, subnetOf)
	if e, ok := s.Endpoint("o", ip); !ok || e.App != "app" || !res.Visible || len(res.Out) != 1 {
		t.Fatalf("merged %+v %v; result %+v", e, ok, res)
	}
	// The owner no longer lists it (tombstone pruned there): gone.
	res = Result{}
	s.ExpireOwner("o", 10, nil, &res)
	if e, _ := s.Endpoint("o", ip); !e.Deleted || !res.Visible || !res.Stored {
		t.Fatalf("after the owner dropped it: %+v, result %+v", e, res)
	}
	// A stale copy cannot bring it back.
	s.MergeEndpoint(EndpointRec{Owner: "o", IP: ip, App: "app", Seq: 5}, false, &res, subnetOf)
	if e, _ := s.Endpoint("o", ip); !e.Deleted {
		t.Fatalf("stale entry resurrected: %+v", e)
	}
	// Someone holds a live entry of ours we do not know: we tombstone it.
	res = Result{}
	mine := EndpointRec{Owner: "me", IP: netip.MustParseAddr("10.255.1.3"), App: "old", Seq: 1 << 62}
	s.MergeEndpoint(mine, true, &res, subnetOf)
	if e, _ := s.Endpoint("me", mine.IP); !e.Deleted || e.Seq <= mine.Seq || len(res.Out) != 1 || s.HasLocalEndpoints() {
		t.Fatalf("own stale entry: %+v, %d to send", e, len(res.Out))
	}
}

// TestPolicyDigest: the digest depends on the registers held, not on the
// order they came in or on the registers they replaced; a changed register
// changes its own bucket and no other.
func TestPolicyDigest(t *testing.T) {
	const n = 3000
	final := make([]PolicyReg, n)
	for i := range final {
		final[i] = PolicyReg{Rule: ToWire(rule(fmt.Sprintf("src%d", i), "dst", uint16(1+i))), Present: i%3 != 0, Stamp: uint64(1000 + i), Origin: "cli@a"}
	}
	a, b := newTestStore("a"), newTestStore("b")
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
	if used < DigestBuckets*9/10 {
		t.Errorf("%d keys fill %d of %d buckets", n, used, DigestBuckets)
	}
	for _, change := range []func(p *PolicyReg){
		func(p *PolicyReg) { p.Present = !p.Present },
		func(p *PolicyReg) { p.Stamp++ },
		func(p *PolicyReg) { p.Origin = "cli@c" },
	} {
		c := newTestStore("c")
		for _, p := range final {
			c.putPolicy(p.Rule.rule().Key(), p)
		}
		p := final[42]
		change(&p)
		k := p.Rule.rule().Key()
		c.putPolicy(k, p)
		sum := a.Digest()
		differ := c.DifferingBuckets(sum[:])
		if want := Bucket(k); !slices.Equal(differ, []int{want}) {
			t.Errorf("one register changed: buckets %v differ, want [%d]", differ, want)
		}
	}
}

// TestPoliciesShared: Rules returns one sorted slice until the set
// changes, and a change gives a new one without touching the old.
func TestPoliciesShared(t *testing.T) {
	s := newTestStore("n")
	merge := func(r policy.Rule, stamp uint64) {
		var res Result
		if _, err := s.MergePolicy(signed(PolicyReg{Rule: ToWire(r), Present: true, Stamp: stamp, Origin: "x"}), true, &res); err != nil {
			t.Fatal(err)
		}
	}
	merge(rule("b", "c", 1), 1)
	merge(rule("a", "c", 1), 2)
	p1, p2 := s.Rules(), s.Rules()
	if len(p1) != 2 || &p1[0] != &p2[0] {
		t.Fatalf("two calls without a change: %d rules, shared %v", len(p1), len(p2) > 0 && &p1[0] == &p2[0])
	}
	merge(rule("a", "b", 1), 3)
	p3 := s.Rules()
	if got, want := ruleKeys(p3), ruleKeys([]policy.Rule{rule("a", "b", 1), rule("a", "c", 1), rule("b", "c", 1)}); got != want {
		t.Errorf("after a change: %q, want %q", got, want)
	}
	if got, want := ruleKeys(p1), ruleKeys([]policy.Rule{rule("a", "c", 1), rule("b", "c", 1)}); got != want {
		t.Errorf("the earlier slice changed: %q, want %q", got, want)
	}
}

// TestForgedBatchStops: a batch whose register has a wrong signature by a
// trusted key is forged: the registers after it are not merged (each
// would cost a signature check) but counted.
func TestForgedBatchStops(t *testing.T) {
	s := newTestStore("cell-a")
	forged := signed(PolicyReg{Rule: ToWire(rule("evil", "db", 5432)), Present: true, Stamp: 5, Origin: "x"})
	forged.Stamp++ // the signature no longer matches
	good := signed(PolicyReg{Rule: ToWire(rule("web", "db", 5432)), Present: true, Stamp: 5, Origin: "x"})
	merge := func(ps ...PolicyReg) {
		got, err := DecodePolicyBatch(Encode(MsgPolSet, ps), nil)
		if err != nil {
			t.Fatal(err)
		}
		var res Result
		s.MergePolicies(got, &res)
	}
	merge(forged, good)
	if s.NumPolicies() != 0 || s.RejectedPolicies() != 2 {
		t.Fatalf("after a forged batch: %d rules, %d rejected; want 0 and 2", s.NumPolicies(), s.RejectedPolicies())
	}
	merge(good)
	if s.NumPolicies() != 1 {
		t.Fatal("the valid register alone was not merged")
	}
}

// TestFutureStampWording: a change stamped far in the future is refused
// with how far ahead it is, never a negative duration (issue 22: a stamp
// near 2^64 read "-499014h ahead").
func TestFutureStampWording(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	ns := uint64(now.UnixNano())
	for _, tt := range []struct {
		stamp uint64
		want  string
	}{
		{ns + uint64(6*time.Minute), "6m0s"},
		{ns + uint64(50*time.Hour), "2 days"},
		{ns + uint64(3*8766*time.Hour), "3 years"},
		{ns + math.MaxInt64, "292 years"},
		{math.MaxUint64, "more than 292 years"},
		{ns - 1, "0s"},
	} {
		if got := aheadBy(tt.stamp, now); got != tt.want {
			t.Errorf("aheadBy(now+%d) = %q, want %q", tt.stamp-ns, got, tt.want)
		}
	}
	s := newTestStore("cell-0")
	c := PolicyChange{Rule: rule("a", "b", 1), Present: true, Stamp: math.MaxUint64, Origin: "cli@test"}
	SignPolicyChange(&c, testOperator)
	p, err := s.CheckPolicyChange(c, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.MergePolicyChange(c, p)
	if want := "policy change refused: its stamp is more than 292 years ahead of this cell's clock"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("MergePolicyChange(stamp 2^64-1) = %v, want %q", err, want)
	}
}
