package mesh

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

// TestPolicySignatures: only changes signed by a trusted operator key are
// merged, by whatever path they come; the others are counted.
func TestPolicySignatures(t *testing.T) {
	ms := cluster(t, 2)
	a, b := ms[0], ms[1]
	h := newCapture()
	c := startNode(t, "cell-c", nodeOpts{join: a.joinAddr(), noOperatorKey: true, logger: slog.New(h)})
	all := append(ms, c)
	waitMembers(t, all, 3)

	// A cell without the private key cannot change policy itself.
	if _, err := c.AddPolicy(rule("x", "y", 1)); !errors.Is(err, store.ErrNoOperatorKey) {
		t.Fatalf("AddPolicy without an operator key: %v, want store.ErrNoOperatorKey", err)
	}
	// ... but it accepts a change signed elsewhere (the CLI) and spreads it.
	r := rule("appA", "appB", 8080)
	ch := store.PolicyChange{Rule: r, Present: true, Stamp: uint64(time.Now().UnixNano()), Origin: "cli@test"}
	store.SignPolicyChange(&ch, testOperator)
	if changed, err := c.ApplyPolicyChange(ch); !changed || err != nil {
		t.Fatalf("ApplyPolicyChange = %v, %v", changed, err)
	}
	if changed, err := c.ApplyPolicyChange(ch); changed || err != nil {
		t.Fatalf("second ApplyPolicyChange = %v, %v; want a no-op", changed, err)
	}
	waitPolicies(t, all, r)

	// A removal stamped before the add is stale.
	old := store.PolicyChange{Rule: r, Present: false, Stamp: ch.Stamp - 1, Origin: "cli@test"}
	store.SignPolicyChange(&old, testOperator)
	var stale *store.StaleChangeError
	if _, err := c.ApplyPolicyChange(old); !errors.As(err, &stale) || stale.Current != ch.Stamp {
		t.Fatalf("stale removal: %v, want store.StaleChangeError with current %d", err, ch.Stamp)
	}

	// Refused through the API: unsigned, untrusted, tampered.
	_, stranger, _ := ed25519.GenerateKey(nil)
	untrusted := store.PolicyChange{Rule: rule("evil", "appB", 22), Present: true, Stamp: ch.Stamp + 10, Origin: "cli@evil"}
	store.SignPolicyChange(&untrusted, stranger)
	tampered := store.PolicyChange{Rule: rule("appA", "appB", 8080), Present: false, Stamp: ch.Stamp + 10, Origin: "cli@test"}
	store.SignPolicyChange(&tampered, testOperator)
	tampered.Rule.Ports.End = 8081 // signature no longer matches
	tampered.Rule.Ports.Start = 8081
	for _, tc := range []struct {
		c    store.PolicyChange
		want string
	}{
		{store.PolicyChange{Rule: r, Stamp: ch.Stamp + 10, Origin: "cli@x"}, "not signed"},
		{untrusted, "signed by an untrusted key " + store.Fingerprint(stranger.Public().(ed25519.PublicKey))},
		{tampered, "bad signature"},
	} {
		if _, err := a.ApplyPolicyChange(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ApplyPolicyChange: %v, want %q", err, tc.want)
		}
	}
	if n := a.RejectedPolicies(); n != 3 {
		t.Fatalf("RejectedPolicies = %d, want 3", n)
	}

	// Refused by gossip and push/pull on a cell that has the cluster key.
	forged := store.PolicyReg{Rule: store.ToWire(rule("evil", "appB", 22)), Present: true, Stamp: ch.Stamp + 20, Origin: "cell-c"}
	(*delegate)(b).NotifyMsg(store.Encode(store.MsgPolicy, forged))
	(*delegate)(b).MergeRemoteState(store.Encode(store.MsgFull, store.FullState{From: "cell-c", Policies: []store.PolicyReg{forged}}), false)
	if n := b.RejectedPolicies(); n != 2 {
		t.Fatalf("RejectedPolicies on b = %d, want 2", n)
	}
	// A forged removal of an existing rule is refused too.
	del := store.PolicyReg{Rule: store.ToWire(r), Present: false, Stamp: ch.Stamp + 30, Origin: "cell-c"}
	(*delegate)(b).NotifyMsg(store.Encode(store.MsgPolicy, del))
	waitPolicies(t, all, r)

	// c, which holds no key, logs the rejection of anything forged.
	(*delegate)(c).NotifyMsg(store.Encode(store.MsgPolicy, forged))
	eventually(t, time.Second, "rejection logged", func() error {
		if len(h.matching("WARN", "rejected policy change: not signed")) == 0 {
			return errors.New("not logged")
		}
		return nil
	})
}

// TestPersistedPoliciesVerified: a restarted cell keeps only the persisted
// changes its trusted keys still vouch for.
func TestPersistedPoliciesVerified(t *testing.T) {
	dir := t.TempDir()
	a := startNode(t, "cell-a", nodeOpts{dir: dir})
	mustAdd(t, a, rule("appA", "appB", 1))
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	// Forge an entry into state.json.
	var sf store.StateFile
	path := filepath.Join(dir, store.StateFileName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &sf); err != nil {
		t.Fatal(err)
	}
	sf.Policies = append(sf.Policies, store.PolicyReg{Rule: store.ToWire(rule("evil", "appB", 2)), Present: true, Stamp: 1, Origin: "x"})
	b, _ = json.Marshal(sf)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	a2 := startNode(t, "cell-a", nodeOpts{dir: dir})
	if got := ruleKeys(a2.Policies()); got != rule("appA", "appB", 1).Key() {
		t.Fatalf("policies after restart: %s", got)
	}
	// Trusting another key only: nothing is left.
	_, other, _ := ed25519.GenerateKey(nil)
	a2.Shutdown()
	a3 := startNode(t, "cell-a", nodeOpts{dir: dir, trusted: []ed25519.PublicKey{other.Public().(ed25519.PublicKey)}})
	if got := a3.Policies(); len(got) != 0 {
		t.Fatalf("policies trusted by no key survived: %v", got)
	}
}

// TestUnverifiedKeptAside: a cell whose trusted keys no longer verify its
// persisted policy (operators.pub damaged into another valid key) applies
// none of it, but first copies state.json aside and says where with an
// error; once the right key is trusted again, the changes come back.
func TestUnverifiedKeptAside(t *testing.T) {
	dir := t.TempDir()
	a := startNode(t, "cell-a", nodeOpts{dir: dir})
	mustAdd(t, a, rule("appA", "appB", 1))
	if _, err := a.MapRoute(store.Route{Host: "api", Domain: "apps.internal", App: "appB"}, true); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(filepath.Join(dir, store.StateFileName))
	if err != nil {
		t.Fatal(err)
	}

	_, other, _ := ed25519.GenerateKey(nil)
	logs := newCapture()
	b := startNode(t, "cell-a", nodeOpts{dir: dir, noOperatorKey: true, logger: slog.New(logs),
		trusted: []ed25519.PublicKey{other.Public().(ed25519.PublicKey)}})
	if len(b.Policies()) != 0 || len(b.Routes()) != 0 {
		t.Fatalf("unverified changes applied: %v %v", b.Policies(), b.Routes())
	}
	aside, _ := filepath.Glob(filepath.Join(dir, store.StateFileName+".unverified-*"))
	if len(aside) != 1 {
		t.Fatalf("kept aside: %v, want one file", aside)
	}
	if kept, _ := os.ReadFile(aside[0]); !bytes.Equal(kept, orig) {
		t.Fatal("the copy kept aside differs from state.json as it was")
	}
	if len(logs.matching("ERROR", "kept aside")) == 0 {
		t.Error("no error logged about the copy kept aside")
	}
	if err := b.Shutdown(); err != nil { // rewrites state.json without them
		t.Fatal(err)
	}

	c := startNode(t, "cell-a", nodeOpts{dir: dir})
	if got := ruleKeys(c.Policies()); got != rule("appA", "appB", 1).Key() {
		t.Fatalf("policies once the key is trusted again: [%s]", got)
	}
	if got := routeList(c.Routes()); got != "api.apps.internal -> appB;" {
		t.Fatalf("routes once the key is trusted again: %s", got)
	}
}

// smallOverlay: 10.255.0.0/28 cut into /30s: 3 usable subnets.
func smallOverlay(hold time.Duration) func(*Config) {
	return func(c *Config) {
		c.OverlayCIDR = netip.MustParsePrefix("10.255.0.0/28")
		c.SubnetBits = 30
		c.LeaseHold = hold
	}
}

func waitDead(t *testing.T, m *Mesh, name string) {
	t.Helper()
	eventually(t, 10*time.Second, name+" dead on "+m.cfg.Name, func() error {
		for _, n := range m.Members() {
			if n.Name == name && n.State == NodeDead {
				return nil
			}
		}
		return fmt.Errorf("%v", m.Members())
	})
}

func waitLease(t *testing.T, m *Mesh) netip.Prefix {
	t.Helper()
	var p netip.Prefix
	eventually(t, 5*time.Second, m.cfg.Name+" leased", func() error {
		if p = m.Subnet(); !p.IsValid() {
			return errors.New("no lease")
		}
		return nil
	})
	return p
}

// TestLeaseHold: a dead cell's lease is not taken while a free subnet
// exists; when none is, the longest-dead lease is taken over (logged); with
// no dead lease either, the cell reports exhaustion.
func TestLeaseHold(t *testing.T) {
	opt := func(name string, join []string, h *captureHandler) *Mesh {
		o := nodeOpts{join: join, mutate: smallOverlay(24 * time.Hour)}
		if h != nil {
			o.logger = slog.New(h)
		}
		return startNode(t, name, o)
	}
	a := opt("cell-a", nil, nil)
	b := opt("cell-b", a.joinAddr(), nil)
	waitMembers(t, []*Mesh{a, b}, 2)
	bSub := b.Subnet()
	b.kill()
	waitDead(t, a, "cell-b")

	c := opt("cell-c", a.joinAddr(), nil)
	if p := waitLease(t, c); p == bSub || p == a.Subnet() {
		t.Fatalf("cell-c took %v while a free subnet existed (a %v, dead b %v)", p, a.Subnet(), bSub)
	}
	hd := newCapture()
	d := opt("cell-d", a.joinAddr(), hd)
	if p := waitLease(t, d); p != bSub {
		t.Fatalf("cell-d took %v, want the dead cell's %v (pool exhausted)", p, bSub)
	}
	if len(hd.matching("WARN", "subnet pool exhausted: taking over the lease of a dead cell")) == 0 {
		t.Fatal("takeover within the hold not logged")
	}
	he := newCapture()
	e := opt("cell-e", a.joinAddr(), he)
	eventually(t, 5*time.Second, "exhaustion reported", func() error {
		if e.LeaseError() == "" || len(he.matching("ERROR", "SUBNET POOL EXHAUSTED")) == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	if !strings.Contains(e.LeaseError(), "no free subnet: all 3 subnets of 10.255.0.0/28") {
		t.Fatalf("LeaseError = %q", e.LeaseError())
	}
	if e.Subnet().IsValid() {
		t.Fatalf("cell-e has %v", e.Subnet())
	}
}

// TestLeaseHoldExpires: after the hold, a dead cell's lease may be taken
// over; the takeover beats the old lease when its holder returns.
func TestLeaseHoldExpires(t *testing.T) {
	// A new cell learns of a dead one from its lease record, and counts the
	// hold from then: keep it tiny.
	const hold = time.Nanosecond
	opts := func(dir string, join []string) nodeOpts {
		return nodeOpts{dir: dir, join: join, mutate: smallOverlay(hold)}
	}
	a := startNode(t, "cell-a", opts("", nil))
	b := startNode(t, "cell-b", opts("", a.joinAddr()))
	cDir := t.TempDir()
	c := startNode(t, "cell-c", opts(cDir, a.joinAddr()))
	waitMembers(t, []*Mesh{a, b, c}, 3)
	cSub := c.Subnet()
	c.kill()
	waitDead(t, a, "cell-c")
	h := newCapture()
	o := opts("", a.joinAddr())
	o.logger = slog.New(h)
	d := startNode(t, "cell-d", o)
	if p := waitLease(t, d); p != cSub {
		t.Fatalf("cell-d took %v, want %v", p, cSub)
	}
	if len(h.matching("INFO", "dead longer than the lease hold")) == 0 {
		t.Fatal("takeover after the hold not logged")
	}
	// c returns with its old lease.json: it lost the subnet, and having no
	// containers, it drops the lease (and finds none free).
	c.Shutdown()
	c2 := startNode(t, "cell-c", opts(cDir, a.joinAddr()))
	eventually(t, 5*time.Second, "returning cell gives the subnet up", func() error {
		if c2.Subnet() == cSub {
			return errors.New("still holds it")
		}
		return nil
	})
	if d.Subnet() != cSub {
		t.Fatalf("cell-d lost %v", cSub)
	}
}

// TestKeyRotation: install a new cluster key, make it primary, remove the
// old one, on a live 3-node cluster: membership never breaks; afterwards a
// node knowing only the old key cannot join, one with the new key can.
func TestKeyRotation(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	keyFile := filepath.Join(dirs[0], "cluster.key")
	mut := func(c *Config) { c.ClusterKeyFile = keyFile }
	a := startNode(t, "cell-a", nodeOpts{dir: dirs[0], mutate: mut})
	b := startNode(t, "cell-b", nodeOpts{dir: dirs[1], join: a.joinAddr()})
	c := startNode(t, "cell-c", nodeOpts{dir: dirs[2], join: a.joinAddr()})
	ms := []*Mesh{a, b, c}
	waitMembers(t, ms, 3)

	// Watch membership all along: nobody may ever look dead.
	var broken atomic.Value
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			for _, m := range ms {
				for _, n := range m.Members() {
					if n.State != NodeAlive {
						broken.Store(fmt.Sprintf("%s saw %s %v", m.cfg.Name, n.Name, n.State))
					}
				}
			}
		}
	}()

	newKey := bytes.Repeat([]byte{42}, 32)
	stamp := uint64(time.Now().UnixNano())
	op := func(m *Mesh, o store.KeyringOp) {
		t.Helper()
		stamp++
		o.Stamp = stamp
		store.SignKeyringOp(&o, testOperator)
		if err := m.ApplyKeyringOp(o); err != nil {
			t.Fatalf("%s %s: %v", m.cfg.Name, o.Op, err)
		}
	}
	waitKeys := func(want ...[]byte) {
		t.Helper()
		var fps []string
		for _, k := range want {
			fps = append(fps, store.Fingerprint(k))
		}
		eventually(t, 5*time.Second, "keyrings "+strings.Join(fps, ","), func() error {
			for _, m := range ms {
				if got := m.Keyring(); !slices.Equal(got, fps) {
					return fmt.Errorf("%s has %v", m.cfg.Name, got)
				}
			}
			return nil
		})
	}
	op(a, store.KeyringOp{Op: store.KeyInstall, Key: newKey})
	waitKeys(testKey, newKey)
	op(b, store.KeyringOp{Op: store.KeyUse, Key: newKey})
	waitKeys(newKey, testKey)
	op(c, store.KeyringOp{Op: store.KeyRemove, KeyID: store.Fingerprint(testKey)})
	waitKeys(newKey)

	// Policy still flows after the rotation.
	mustAdd(t, c, rule("after", "rotation", 1))
	waitPolicies(t, ms, rule("after", "rotation", 1))
	close(stop)
	<-watched
	if v := broken.Load(); v != nil {
		t.Fatalf("membership broke during rotation: %v", v)
	}

	// Persisted: keyring.json, and the cluster key file of a.
	if k, err := os.ReadFile(keyFile); err != nil || !bytes.Equal(k, newKey) {
		t.Fatalf("cluster key file: %v %x", err, k)
	}
	// A replayed (old) operation is refused.
	replay := store.KeyringOp{Op: store.KeyUse, Key: testKey, Stamp: stamp - 1}
	store.SignKeyringOp(&replay, testOperator)
	if err := a.ApplyKeyringOp(replay); err == nil || !strings.Contains(err.Error(), "not newer") {
		t.Fatalf("replayed op: %v", err)
	}
	// An unsigned one too.
	if err := a.ApplyKeyringOp(store.KeyringOp{Op: store.KeyUse, Key: testKey, Stamp: stamp + 100}); err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Fatalf("unsigned op: %v", err)
	}

	// Only the old key: cannot join.
	h := newCapture()
	old := startNode(t, "cell-old", nodeOpts{join: a.joinAddr(), logger: slog.New(h)})
	eventually(t, 5*time.Second, "old-key join failure logged", func() error {
		if len(h.matching("WARN", "failed")) == 0 {
			return errors.New("no failure yet")
		}
		return nil
	})
	if old.Joined() {
		t.Fatal("a node with only the old key joined")
	}
	// The new key: joins; a restarted member uses its persisted keyring.
	fresh := startNode(t, "cell-new", nodeOpts{join: a.joinAddr(), key: newKey})
	b.Shutdown()
	b2 := startNode(t, "cell-b", nodeOpts{dir: dirs[1], join: a.joinAddr()}) // Config.ClusterKey is the old one
	waitMembers(t, []*Mesh{a, c, fresh, b2}, 4)
	if got := b2.Keyring(); !slices.Equal(got, []string{store.Fingerprint(newKey)}) {
		t.Fatalf("restarted b keyring %v", got)
	}
}

// TestApplyPolicyChanges: a batch is applied change by change, with each
// change's own answer (applied, a no-op, refused), reaches the other cells
// and is in state.json when the call returns.
func TestApplyPolicyChanges(t *testing.T) {
	ms := cluster(t, 2)
	a := ms[0]
	stamp := uint64(time.Now().UnixNano())
	sign := func(r policy.Rule, present bool) store.PolicyChange {
		stamp++
		c := store.PolicyChange{Rule: r, Present: present, Stamp: stamp, Origin: "cli@test"}
		store.SignPolicyChange(&c, testOperator)
		return c
	}
	var cs []store.PolicyChange
	var want []policy.Rule
	for i := range 500 {
		r := rule(fmt.Sprintf("src%d", i), "dst", uint16(1+i))
		cs = append(cs, sign(r, true))
		want = append(want, r)
	}
	forged := sign(rule("evil", "dst", 22), true)
	forged.Rule.Ports = policy.PortRange{Start: 23, End: 23} // the signature no longer matches
	cs = append(cs, forged, sign(want[0], true), sign(rule("absent", "dst", 1), false))

	changed, errs := a.ApplyPolicyChanges(cs)
	for i := range 500 {
		if !changed[i] || errs[i] != nil {
			t.Fatalf("change %d: %v, %v; want applied", i, changed[i], errs[i])
		}
	}
	if changed[500] || errs[500] == nil || !strings.Contains(errs[500].Error(), "bad signature") {
		t.Errorf("forged change: %v, %v; want refused for its signature", changed[500], errs[500])
	}
	for _, i := range []int{501, 502} { // re-adding a present rule, removing an absent one
		if changed[i] || errs[i] != nil {
			t.Errorf("change %d: %v, %v; want a no-op", i, changed[i], errs[i])
		}
	}
	slices.SortFunc(want, func(x, y policy.Rule) int { return strings.Compare(x.Key(), y.Key()) })
	waitPolicies(t, ms, want...)

	var sf store.StateFile
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, store.StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &sf); err != nil {
		t.Fatal(err)
	}
	if n := len(sf.Policies); n != len(want) {
		t.Errorf("state.json holds %d policies, want %d", n, len(want))
	}
}

// TestFullStateCompressed: a large full state travels compressed and
// merges as the plain one does; the list of 100k signed rules, as a cell of
// an earlier build sent it, is over memberlist's 20 MiB push/pull limit
// as JSON and under it compressed, and now refused (more than
// store.MaxStatePolicies).
func TestFullStateCompressed(t *testing.T) {
	defer func(l int64) { joinPolicyList.Store(l) }(joinPolicyList.Load())
	joinPolicyList.Store(2000)
	a := startNode(t, "cell-a", nodeOpts{})
	cs := applyRules(t, a, 2000)
	stamp := cs[len(cs)-1].Stamp
	st := (*delegate)(a).LocalState(true) // a join's: with the policies
	if st[0] != store.MsgFullZ {
		t.Fatalf("a %d-byte state goes as %q, want compressed", len(st), st[0])
	}
	b := startNode(t, "cell-b", nodeOpts{}) // not joined: only this merge
	(*delegate)(b).MergeRemoteState(st, false)
	if n := len(b.Policies()); n != len(cs) {
		t.Fatalf("merged %d rules of %d", n, len(cs))
	}

	// 100k rules, each with its own signature: over the limit as JSON,
	// under it compressed.
	fs := store.FullState{From: "cell-a"}
	sig := make([]byte, ed25519.SignatureSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 100000 {
		for j := 0; j < len(sig); j += 8 {
			binary.LittleEndian.PutUint64(sig[j:], rng.Uint64())
		}
		fs.Policies = append(fs.Policies, store.PolicyReg{Rule: store.ToWire(rule(fmt.Sprintf("app%05d", i/2), fmt.Sprintf("app%05d", i%997), uint16(1+i%60000))),
			Present: true, Stamp: stamp + uint64(i), Origin: "cli@ops-host", Signer: testOperator.Public().(ed25519.PublicKey), Sig: slices.Clone(sig)})
	}
	const limit = 20 << 20 // memberlist's maxPushStateBytes
	full := store.Encode(store.MsgFull, fs)
	z := store.ZipState(full)
	t.Logf("100k rules: %.1f MB of JSON, %.1f MB compressed", float64(len(full))/1e6, float64(len(z))/1e6)
	if len(full) <= limit || len(z) > limit {
		t.Errorf("JSON %d bytes, compressed %d: want over and under %d", len(full), len(z), limit)
	}
	// A cell of this build lists at most store.MaxStatePolicies (a join's
	// list): a state listing more is refused whole, and counted.
	before := b.RejectedPolicies()
	(*delegate)(b).MergeRemoteState(z, false)
	if n := len(b.Policies()); n != len(cs) || b.RejectedPolicies() != before+1 {
		t.Errorf("a state of 100k rules: %d rules after merging it (want %d), %d rejections (want 1)",
			n, len(cs), b.RejectedPolicies()-before)
	}
	fs.Policies = fs.Policies[:store.MaxStatePolicies]
	got, err := store.DecodeFullState(store.ZipState(store.Encode(store.MsgFull, fs)), store.Rejects{})
	if err != nil || len(got.Policies) != store.MaxStatePolicies {
		t.Errorf("a state of %d rules: %d decoded, %v", store.MaxStatePolicies, len(got.Policies), err)
	}
}

// TestPolicyAntiEntropy: registers that gossip never delivered reach the
// other cell through the periodic push/pull, which carries the policy
// digest and not the policies: each side sends the other what it holds in
// the buckets that differ.
func TestPolicyAntiEntropy(t *testing.T) {
	fast := func(c *Config) { c.PushPullInterval = 200 * time.Millisecond }
	a := startNode(t, "cell-a", nodeOpts{mutate: fast})
	b := startNode(t, "cell-b", nodeOpts{mutate: fast, join: a.joinAddr()})
	waitMembers(t, []*Mesh{a, b}, 2)

	// Each cell gets 1500 registers of its own, merged without relaying:
	// as if all their gossip had been lost.
	stamp := uint64(time.Now().UnixNano())
	for _, m := range []*Mesh{a, b} {
		var ps []store.PolicyReg
		for i := range 1500 {
			stamp++
			ps = append(ps, signed(store.PolicyReg{Rule: store.ToWire(rule(m.cfg.Name, fmt.Sprintf("dst%d", i), 8080)), Present: true, Stamp: stamp, Origin: "cli@test"}))
		}
		var res store.Result
		m.mu.Lock()
		for _, p := range ps {
			m.st.MergePolicy(p, false, &res)
		}
		m.mu.Unlock()
		if len(res.Out) != 0 {
			t.Fatal("merge without relay queued gossip")
		}
	}
	start := time.Now()
	eventually(t, 20*time.Second, "both cells hold all 3000 rules", func() error {
		if na, nb := len(a.Policies()), len(b.Policies()); na != 3000 || nb != 3000 {
			return fmt.Errorf("a holds %d, b holds %d", na, nb)
		}
		return nil
	})
	took := time.Since(start)
	a.mu.Lock()
	sa := a.st.Digest()
	a.mu.Unlock()
	b.mu.Lock()
	sb := b.st.Digest()
	b.mu.Unlock()
	if sa != sb {
		t.Error("same policies, digests differ")
	}
	if a.aeSent.Load() == 0 || b.aeSent.Load() == 0 {
		t.Errorf("anti-entropy sent %d and %d registers; want both > 0", a.aeSent.Load(), b.aeSent.Load())
	}
	// A peer's registers are not queued again while a send to it is under
	// way (a push/pull comes 5 times a second here): no message carries a
	// register twice, so none carries more than the 3000 there are. Before,
	// the outbox piled up copies and sent messages of 4500-10000.
	sent := a.aeSent.Load() + b.aeSent.Load()
	most := max(a.aeMaxMsg.Load(), b.aeMaxMsg.Load())
	t.Logf("agreed %v after the merges; anti-entropy sent %d registers in all, at most %d in one message (%d sends skipped: one under way or just done)",
		took.Round(time.Millisecond), sent, most, a.aeSkipped.Load()+b.aeSkipped.Load())
	if most > 3000 {
		t.Errorf("an anti-entropy message carried %d registers; there are 3000", most)
	}

	// The periodic state carries the digest, not the 3000 registers.
	st := (*delegate)(a).LocalState(false)
	var fs store.FullState
	if st[0] != store.MsgFull || json.Unmarshal(st[1:], &fs) != nil {
		t.Fatalf("periodic state: type %q, %d bytes; want plain JSON", st[0], len(st))
	}
	if len(fs.Policies) != 0 || len(fs.PolSum) != store.DigestBuckets || len(st) > 16<<10 {
		t.Errorf("periodic state: %d policies, %d digest buckets, %d bytes; want 0, %d, at most 16 KiB",
			len(fs.Policies), len(fs.PolSum), len(st), store.DigestBuckets)
	}
}

// TestBulkPolicySpread: a batch of changes reaches every cell in batches
// over TCP, not through the gossip queue: four peers, three of which get
// it from the applying cell and the fourth, most of the time, from one of
// them. Each forwards what was news to it to directFanout random members,
// so all three miss the fourth with probability (1/4)^3, about 1 run in
// 64 (seen in CI): the periodic push/pull's anti-entropy is what
// guarantees it, here every second.
func TestBulkPolicySpread(t *testing.T) {
	fast := func(c *Config) { c.PushPullInterval = time.Second }
	a := startNode(t, "cell-a", nodeOpts{mutate: fast})
	ms := []*Mesh{a}
	for i := range 4 {
		ms = append(ms, startNode(t, fmt.Sprintf("cell-%d", i), nodeOpts{mutate: fast, join: a.joinAddr()}))
	}
	waitMembers(t, ms, 5)
	queued := a.queue.NumQueued()
	applyRules(t, a, 600)
	if n := a.queue.NumQueued() - queued; n >= 300 { // one a change would be 600
		t.Errorf("%d gossip messages queued for a batch of 600", n)
	}
	eventually(t, 20*time.Second, "every cell holds the 600 rules", func() error {
		for _, m := range ms {
			if n := len(m.Policies()); n != 600 {
				return fmt.Errorf("%s holds %d", m.cfg.Name, n)
			}
		}
		return nil
	})
	// The applying cell sent the batch whole to directFanout peers; what
	// anti-entropy sent on top (none in most runs) comes from the
	// periodic push/pull.
	if n := a.aeSent.Load(); n < 3*600 {
		t.Errorf("cell-a sent %d registers in batches, want at least %d (600 to each of directFanout peers)", n, 3*600)
	}
}

// TestLargeSetJoin: a cell joining a cluster whose policy set is over
// joinPolicyList gets it as a digest in the join's push/pull and then in
// batches of policyBatch.
func TestLargeSetJoin(t *testing.T) {
	defer func(l, b int64) { joinPolicyList.Store(l); policyBatch.Store(b) }(joinPolicyList.Load(), policyBatch.Load())
	joinPolicyList.Store(100)
	policyBatch.Store(300)
	quiet := func(c *Config) { c.PushPullInterval = time.Hour }
	a := startNode(t, "cell-a", nodeOpts{mutate: quiet})
	applyRules(t, a, 1000)
	var fs store.FullState
	if st := (*delegate)(a).LocalState(true); st[0] != store.MsgFull || json.Unmarshal(st[1:], &fs) != nil || len(fs.Policies) != 0 || len(fs.PolSum) != store.DigestBuckets {
		t.Fatalf("join state of 1000 rules: %d listed, %d digest buckets; want 0 and %d", len(fs.Policies), len(fs.PolSum), store.DigestBuckets)
	}
	b := startNode(t, "cell-b", nodeOpts{mutate: quiet, join: a.joinAddr()})
	eventually(t, 20*time.Second, "cell-b holds the 1000 rules", func() error {
		if n := len(b.Policies()); n != 1000 {
			return fmt.Errorf("cell-b holds %d", n)
		}
		return nil
	})
	if n := a.aeSent.Load(); n != 1000 {
		t.Errorf("cell-a sent %d registers, want 1000 (in batches of %d)", n, policyBatch.Load())
	}

	// Under joinPolicyList both sides list their policies in the join's
	// push/pull, and neither sends them again.
	joinPolicyList.Store(2000)
	c := startNode(t, "cell-c", nodeOpts{mutate: quiet, join: a.joinAddr()})
	eventually(t, 5*time.Second, "cell-c holds the 1000 rules", func() error {
		if n := len(c.Policies()); n != 1000 {
			return fmt.Errorf("cell-c holds %d", n)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // a batch would be out by now
	if n := a.aeSent.Load(); n != 1000 {
		t.Errorf("cell-a sent %d more registers after a join that listed them", n-1000)
	}
}

// TestRestartedCellJoinsWithoutLists: a cell restarted with the set its
// peer holds (from its state.json) joins without either side listing or
// sending a policy. At the default joinPolicyList the join's push/pull of
// two cells holding 2000 rules is a digest each way. Listing them (the
// default was 20 000) made every restart of a cell with 10k rules decode,
// verify and merge its peer's whole list: the agents' peak RSS rose from
// 44 to 70 MB in the ladder's restarts.
func TestRestartedCellJoinsWithoutLists(t *testing.T) {
	quiet := func(c *Config) { c.PushPullInterval = time.Hour }
	a := startNode(t, "cell-a", nodeOpts{mutate: quiet})
	cs := applyRules(t, a, 2000)
	dir := t.TempDir()
	b := startNode(t, "cell-b", nodeOpts{mutate: quiet, dir: dir})
	if _, errs := b.ApplyPolicyChanges(cs); errors.Join(errs...) != nil {
		t.Fatal(errors.Join(errs...))
	}
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	st := (*delegate)(a).LocalState(true)
	fs, err := store.DecodeFullState(st, store.Rejects{})
	if err != nil || len(fs.Policies) != 0 || len(fs.PolSum) != store.DigestBuckets {
		t.Fatalf("join state of 2000 rules (%d bytes): %d listed, %d digest buckets (%v); want 0 and %d", len(st), len(fs.Policies), len(fs.PolSum), err, store.DigestBuckets)
	}
	b = startNode(t, "cell-b", nodeOpts{mutate: quiet, dir: dir, join: a.joinAddr()})
	if n := len(b.Policies()); n != 2000 {
		t.Fatalf("restarted cell-b loaded %d rules from its state, want 2000", n)
	}
	eventually(t, 5*time.Second, "cell-a sees cell-b", func() error {
		for _, n := range a.Members() {
			if n.Name == "cell-b" && n.State == NodeAlive {
				return nil
			}
		}
		return errors.New("not yet")
	})
	if sa, sb := a.aeSent.Load(), b.aeSent.Load(); sa != 0 || sb != 0 {
		t.Errorf("equal sets sent %d and %d registers after the join, want none", sa, sb)
	}
}

// applyRules applies n signed adds of rules src<i> -> dst on m and
// returns them.
func applyRules(t *testing.T, m *Mesh, n int) []store.PolicyChange {
	t.Helper()
	stamp := uint64(time.Now().UnixNano())
	var cs []store.PolicyChange
	for i := range n {
		stamp++
		c := store.PolicyChange{Rule: rule(fmt.Sprintf("src%d", i), "dst", 8080), Present: true, Stamp: stamp, Origin: "cli@test"}
		store.SignPolicyChange(&c, testOperator)
		cs = append(cs, c)
	}
	if _, errs := m.ApplyPolicyChanges(cs); errors.Join(errs...) != nil {
		t.Fatal(errors.Join(errs...))
	}
	return cs
}

// TestPolicyBatchAppliedWhole: a batch that replaces rule tcp 8082 by
// 8081-8090 is never seen, on the cell that applies it or on another,
// with neither rule: each cell merges it whole (issue 22, item 9: a cell
// that merged the removal alone compiled a table that cut the flows on
// 8082). Every state either cell tells its listener of is recorded.
func TestPolicyBatchAppliedWhole(t *testing.T) {
	ms := cluster(t, 2)
	a := ms[0]
	old, repl, other := rule("appA", "appB", 8082), rule("appA", "appB", 8081), rule("appC", "appB", 53)
	repl.Ports.End = 8090
	stamp := uint64(time.Now().UnixNano())
	sign := func(r policy.Rule, present bool) store.PolicyChange {
		stamp++
		c := store.PolicyChange{Rule: r, Present: present, Stamp: stamp, Origin: "cli@test"}
		store.SignPolicyChange(&c, testOperator)
		return c
	}
	if _, errs := a.ApplyPolicyChanges([]store.PolicyChange{sign(old, true), sign(other, true)}); errors.Join(errs...) != nil {
		t.Fatal(errors.Join(errs...))
	}
	// Loaded test machines (load 15 on 2 cores) need more than waitPolicies' 3 s.
	wait := func(want ...policy.Rule) {
		t.Helper()
		policy.SortRules(want)
		eventually(t, 15*time.Second, "policies converged", func() error {
			for _, m := range ms {
				if got := ruleKeys(m.Policies()); got != ruleKeys(want) {
					return fmt.Errorf("%s has [%s], want [%s]", m.cfg.Name, got, ruleKeys(want))
				}
			}
			return nil
		})
	}
	wait(old, other)

	var mu sync.Mutex
	var bad []string
	for _, m := range ms {
		record := func() {
			rs := m.Policies()
			if !slices.Contains(rs, old) && !slices.Contains(rs, repl) {
				mu.Lock()
				bad = append(bad, m.cfg.Name+": ["+ruleKeys(rs)+"]")
				mu.Unlock()
			}
		}
		m.afterChange.Store(&record)
	}
	for range 5 { // back and forth: each direction is a replacement
		if _, errs := a.ApplyPolicyChanges([]store.PolicyChange{sign(old, false), sign(repl, true)}); errors.Join(errs...) != nil {
			t.Fatal(errors.Join(errs...))
		}
		wait(repl, other)
		if _, errs := a.ApplyPolicyChanges([]store.PolicyChange{sign(repl, false), sign(old, true)}); errors.Join(errs...) != nil {
			t.Fatal(errors.Join(errs...))
		}
		wait(old, other)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("%d states held neither tcp 8082 nor 8081-8090, e.g. %s", len(bad), bad[0])
	}
}

// TestOutboxQueuesARegisterOnce: registers queued for a peer while the same
// ones still wait (an anti-entropy send, then the same registers relayed
// back by spreadPolicies) wait once, so that no message carries one twice
// (CI saw TestPolicyAntiEntropy's bound broken by 4492 in one message).
func TestOutboxQueuesARegisterOnce(t *testing.T) {
	a := startNode(t, "cell-a", nodeOpts{})
	b := startNode(t, "cell-b", nodeOpts{join: a.joinAddr()})
	waitMembers(t, []*Mesh{a, b}, 2)
	stamp := uint64(time.Now().UnixNano())
	var ps []store.PolicyReg
	for i := range 50 {
		stamp++
		ps = append(ps, signed(store.PolicyReg{Rule: store.ToWire(rule("cell-a", fmt.Sprintf("dst%d", i), 8080)), Present: true, Stamp: stamp, Origin: "cli@test"}))
	}
	// Holding mu, the outbox's sender cannot take anything yet.
	a.mu.Lock()
	a.queuePoliciesLocked("cell-b", ps)
	a.queuePoliciesLocked("cell-b", ps[10:])
	waiting := len(a.outboxes["cell-b"].ps)
	a.mu.Unlock()
	if waiting != len(ps) {
		t.Errorf("%d registers waiting after queueing %d and %d of them again; want %d", waiting, len(ps), len(ps)-10, len(ps))
	}
}
