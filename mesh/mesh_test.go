package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

func TestThreeNodesJoin(t *testing.T) {
	l := &countingListener{}
	a := startNode(t, "cell-a", nodeOpts{l: l})
	if !a.Joined() {
		t.Fatal("first cell (no Join) is not joined")
	}
	if got, want := a.Subnet(), netip.MustParsePrefix("10.255.1.0/24"); got != want {
		t.Fatalf("first cell subnet %v, want %v (index 0 is reserved)", got, want)
	}
	b := startNode(t, "cell-b", nodeOpts{join: a.joinAddr()})
	c := startNode(t, "cell-c", nodeOpts{join: a.joinAddr()})
	ms := []*Mesh{a, b, c}
	waitMembers(t, ms, 3)

	for _, m := range ms {
		if !m.Joined() {
			t.Errorf("%s not joined", m.cfg.Name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		p, err := m.WaitSubnet(ctx)
		cancel()
		if err != nil || p != m.Subnet() {
			t.Errorf("%s WaitSubnet = %v, %v; Subnet() = %v", m.cfg.Name, p, err, m.Subnet())
		}
		seen := map[netip.Prefix]string{}
		names := []string{}
		for _, n := range m.Members() {
			names = append(names, n.Name)
			if other, dup := seen[n.Subnet]; dup {
				t.Errorf("%s: %s and %s share subnet %v", m.cfg.Name, n.Name, other, n.Subnet)
			}
			seen[n.Subnet] = n.Name
			if n.WGPublicKey != wgKey(n.Name) || n.WGPort != wgPort(n.Name) {
				t.Errorf("%s: metadata of %s = %q/%d, want %q/%d", m.cfg.Name, n.Name, n.WGPublicKey, n.WGPort, wgKey(n.Name), wgPort(n.Name))
			}
			if n.Addr != netip.MustParseAddr("127.0.0.1") {
				t.Errorf("%s: %s addr %v", m.cfg.Name, n.Name, n.Addr)
			}
			if n.Self != (n.Name == m.cfg.Name) {
				t.Errorf("%s: %s Self=%v", m.cfg.Name, n.Name, n.Self)
			}
		}
		if got := strings.Join(names, ","); got != "cell-a,cell-b,cell-c" {
			t.Errorf("%s: members %s, want sorted a,b,c", m.cfg.Name, got)
		}
	}
	if mc, _ := l.counts(); mc == 0 {
		t.Error("listener got no MembersChanged")
	}
}

func TestLeasePersisted(t *testing.T) {
	a := startNode(t, "cell-a", nodeOpts{})
	dir := t.TempDir()
	b := startNode(t, "cell-b", nodeOpts{dir: dir, join: a.joinAddr()})
	waitMembers(t, []*Mesh{a, b}, 2)
	want := b.Subnet()
	if err := b.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := b.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	for _, f := range []string{leaseFileName, store.StateFileName} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %v, want 0600", f, err, st.Mode())
		}
	}
	// A seed that never answers: the lease must come from lease.json.
	b2 := startNode(t, "cell-b", nodeOpts{dir: dir, join: []string{deadAddr(t)}})
	if got := b2.Subnet(); got != want {
		t.Fatalf("restarted subnet %v, want %v", got, want)
	}
}

func TestPolicyReplication(t *testing.T) {
	l := &countingListener{}
	ms := cluster(t, 3)
	a, b, c := ms[0], ms[1], ms[2]
	r1 := rule("appA", "appB", 8080)
	if added, err := a.AddPolicy(r1); !added || err != nil {
		t.Fatalf("AddPolicy = %v, %v", added, err)
	}
	if added, err := a.AddPolicy(r1); added || err != nil {
		t.Fatalf("second AddPolicy = %v, %v; want false", added, err)
	}
	waitPolicies(t, ms, r1)
	if added, _ := c.AddPolicy(r1); added {
		t.Fatal("AddPolicy of a replicated rule on another node reported added")
	}
	if _, err := a.AddPolicy(rule("", "appB", 1)); err == nil {
		t.Fatal("invalid rule accepted")
	}

	if removed, err := b.RemovePolicy(r1); !removed || err != nil {
		t.Fatalf("RemovePolicy = %v, %v", removed, err)
	}
	if removed, _ := b.RemovePolicy(r1); removed {
		t.Fatal("second RemovePolicy reported removed")
	}
	waitPolicies(t, ms)

	// Concurrent adds of different rules on two cells both survive.
	r2, r3 := rule("appA", "appC", 80), rule("appC", "appA", 443)
	done := make(chan error, 2)
	go func() { _, err := a.AddPolicy(r2); done <- err }()
	go func() { _, err := c.AddPolicy(r3); done <- err }()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	waitPolicies(t, ms, r2, r3)

	// A late cell gets them by push/pull and is told via its listener.
	d := startNode(t, "cell-d", nodeOpts{join: b.joinAddr(), l: l})
	waitPolicies(t, []*Mesh{d}, r2, r3)
	eventually(t, time.Second, "StateChanged on d", func() error {
		if _, sc := l.counts(); sc == 0 {
			return errors.New("no StateChanged")
		}
		return nil
	})
}

// TestPolicyPartitionResolves: a cell partitioned away changes the same
// rules as the cluster; after it joins, every cell agrees, and for each rule
// the later change wins.
func TestPolicyPartitionResolves(t *testing.T) {
	ms := cluster(t, 2)
	a := ms[0]
	d := startNode(t, "cell-d", nodeOpts{}) // its own cluster for now
	rAdd, rDel := rule("x", "y", 1), rule("x", "y", 2)

	// rDel: added on d first, removed on a later -> absent.
	mustAdd(t, d, rDel)
	mustAdd(t, a, rDel)
	if removed, _ := a.RemovePolicy(rDel); !removed {
		t.Fatal("remove failed")
	}
	// rAdd: added and removed on a first, added on d later -> present.
	mustAdd(t, a, rAdd)
	if removed, _ := a.RemovePolicy(rAdd); !removed {
		t.Fatal("remove failed")
	}
	mustAdd(t, d, rAdd)
	waitPolicies(t, ms)

	// d's subnet collides with a's (both first cells): d has no endpoints,
	// so the younger of the two re-picks.
	if _, err := d.ml.Join(a.joinAddr()); err != nil {
		t.Fatal(err)
	}
	all := append(ms, d)
	defer func() {
		if t.Failed() {
			for _, m := range all {
				m.mu.Lock()
				t.Logf("%s: %+v", m.cfg.Name, m.st.Snapshot().Policies)
				m.mu.Unlock()
			}
		}
	}()
	waitPolicies(t, all, rAdd)
	waitMembers(t, all, 3)
}

func mustAdd(t *testing.T, m *Mesh, r policy.Rule) {
	t.Helper()
	if added, err := m.AddPolicy(r); !added || err != nil {
		t.Fatalf("AddPolicy(%s) on %s = %v, %v", r.Key(), m.cfg.Name, added, err)
	}
}

func TestEndpointsReplicate(t *testing.T) {
	ms := cluster(t, 3)
	a, b := ms[0], ms[1]
	ipB := ipIn(b.Subnet(), 2)
	if err := b.AddEndpoint(Endpoint{IP: ipB, App: "appB", Name: "ctr-1", Cell: "ignored"}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddEndpoint(Endpoint{IP: ipIn(a.Subnet(), 2), App: "appB"}); err == nil {
		t.Fatal("AddEndpoint outside own subnet accepted")
	}
	ipA := ipIn(a.Subnet(), 5)
	if err := a.AddEndpoint(Endpoint{IP: ipA, App: "appA", Name: "ctr-2"}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%s=appA/ctr-2@cell-0,%s=appB/ctr-1@cell-1", ipA, ipB)
	if ipB.Less(ipA) {
		want = fmt.Sprintf("%s=appB/ctr-1@cell-1,%s=appA/ctr-2@cell-0", ipB, ipA)
	}
	waitEndpoints(t, ms, want)

	// A crafted entry claiming to be b's, outside b's subnet: rejected.
	bad := store.EndpointRec{Owner: "cell-1", IP: ipIn(a.Subnet(), 9), App: "evil", Seq: 1 << 62}
	(*delegate)(ms[2]).NotifyMsg(store.Encode(store.MsgEndpoint, bad))
	if ms[2].RejectedEndpoints() != 1 {
		t.Fatalf("rejected = %d, want 1", ms[2].RejectedEndpoints())
	}
	// The same path accepts a well-formed entry.
	good := store.EndpointRec{Owner: "cell-1", IP: ipIn(b.Subnet(), 9), App: "appB", Seq: 1}
	(*delegate)(ms[2]).NotifyMsg(store.Encode(store.MsgEndpoint, good))
	if got := endpointSet(ms[2].Endpoints()); !strings.Contains(got, good.IP.String()) || strings.Contains(got, "evil") {
		t.Fatalf("endpoints after crafted messages: %s", got)
	}
	// b is the only writer: it tombstones the forged entry.
	waitEndpoints(t, ms, want)

	if err := b.RemoveEndpoint(ipB); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveEndpoint(ipB); err != nil {
		t.Fatalf("second RemoveEndpoint: %v", err)
	}
	want = fmt.Sprintf("%s=appA/ctr-2@cell-0", ipA)
	waitEndpoints(t, ms, want)

	// Let all gossip finish, so a late cell can only learn by push/pull.
	eventually(t, 5*time.Second, "broadcast queues drained", func() error {
		for _, m := range ms {
			if n := m.pendingBroadcasts(); n > 0 {
				return fmt.Errorf("%s has %d queued", m.cfg.Name, n)
			}
		}
		return nil
	})
	d := startNode(t, "cell-d", nodeOpts{join: ms[2].joinAddr()})
	waitEndpoints(t, []*Mesh{d}, want)
}

func TestPoliciesPersisted(t *testing.T) {
	dir := t.TempDir()
	a := startNode(t, "cell-a", nodeOpts{dir: dir})
	r1, r2 := rule("appA", "appB", 8080), rule("appB", "appA", 9000)
	mustAdd(t, a, r1)
	mustAdd(t, a, rule("appB", "y", 9000))
	if _, err := a.RemovePolicy(rule("appB", "y", 9000)); err != nil {
		t.Fatal(err)
	}
	mustAdd(t, a, r2)
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	a2 := startNode(t, "cell-a", nodeOpts{dir: dir, join: []string{deadAddr(t)}})
	if got, want := ruleKeys(a2.Policies()), ruleKeys([]policy.Rule{r1, r2}); got != want {
		t.Fatalf("after restart policies [%s], want [%s]", got, want)
	}
	// The clock survived too: a new change beats the old ones.
	if removed, _ := a2.RemovePolicy(r1); !removed {
		t.Fatal("RemovePolicy after restart")
	}
}

func TestWrongClusterKey(t *testing.T) {
	a := startNode(t, "cell-a", nodeOpts{})
	h := newCapture()
	other := make([]byte, 32)
	b := startNode(t, "cell-b", nodeOpts{join: a.joinAddr(), key: other, logger: slog.New(h)})
	eventually(t, 5*time.Second, "join failure logged", func() error {
		if len(h.matching("WARN", "failed")) == 0 {
			return errors.New("no failure yet")
		}
		return nil
	})
	if b.Joined() || len(a.Members()) != 1 || len(b.Members()) != 1 {
		t.Fatalf("joined=%v a sees %v, b sees %v", b.Joined(), a.Members(), b.Members())
	}
}

// deadAddr returns a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestJoinRetries(t *testing.T) {
	h := newCapture()
	addr := deadAddr(t)
	start := time.Now()
	m := startNode(t, "cell-a", nodeOpts{join: []string{addr}, logger: slog.New(h)})
	if d := time.Since(start); d > time.Second {
		t.Fatalf("New blocked for %v", d)
	}
	for _, want := range []string{"retrying in 1s", "retrying in 2s"} {
		eventually(t, 5*time.Second, want, func() error {
			if len(h.matching("WARN", "join "+addr+" failed: ")) == 0 || len(h.matching("WARN", want)) == 0 {
				return errors.New("not logged")
			}
			return nil
		})
	}
	if m.Joined() || m.Subnet().IsValid() {
		t.Fatalf("joined=%v subnet=%v without any peer", m.Joined(), m.Subnet())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.WaitSubnet(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitSubnet = %v", err)
	}
}

func TestLeaveAndDeath(t *testing.T) {
	ms := cluster(t, 4)
	a, left, killed := ms[0], ms[2], ms[3]
	stateOf := func(m *Mesh, name string) NodeState {
		for _, n := range m.Members() {
			if n.Name == name {
				return n.State
			}
		}
		return -1
	}
	if err := left.Shutdown(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "left seen", func() error {
		if s := stateOf(a, left.cfg.Name); s != NodeLeft {
			return fmt.Errorf("state %v", s)
		}
		return nil
	})
	start := time.Now()
	killed.kill()
	eventually(t, 10*time.Second, "death seen", func() error {
		for _, m := range ms[:2] {
			if s := stateOf(m, killed.cfg.Name); s != NodeDead {
				return fmt.Errorf("%s sees %v", m.cfg.Name, s)
			}
		}
		return nil
	})
	t.Logf("killed cell declared dead after %v", time.Since(start))
	// Dead and left nodes keep their metadata (subnet) in the list.
	for _, n := range a.Members() {
		if !n.Subnet.IsValid() {
			t.Errorf("%s lost its subnet: %+v", n.Name, n)
		}
	}
}

// TestSimultaneousJoinsGetDistinctSubnets: cells that join at the same
// moment pick before the others' claims have arrived by gossip. Joiners
// start from a subnet hashed from their name, so the names here are chosen
// to hash to the same subnet, and they all join at once (their first join
// fails, the seed starts, their retries 1 s later reach it within a few
// ms of each other): all four pick that subnet. A fresh lease is tentative
// until it has settled, so the losers re-pick and a container added the
// moment WaitSubnet returns can never sit in a subnet another cell holds
// (without the settle, the younger cells would keep the duplicate because
// they have a container, and refuse to renumber).
func TestSimultaneousJoinsGetDistinctSubnets(t *testing.T) {
	seed := deadAddr(t)
	const n = 4
	names := sameSubnetNames(t, n, 255)
	ms := make([]*Mesh, n)
	logs := make([]*captureHandler, n)
	var wg sync.WaitGroup
	for i := range n {
		logs[i] = newCapture()
		wg.Go(func() {
			ms[i] = startNode(t, names[i], nodeOpts{join: []string{seed}, logger: slog.New(logs[i])})
		})
	}
	wg.Wait()
	for i := range n {
		eventually(t, 5*time.Second, names[i]+" failed its first join", func() error {
			if len(logs[i].matching("WARN", "join "+seed+" failed")) == 0 {
				return errors.New("not yet")
			}
			return nil
		})
	}
	a := startNode(t, "cell-a", nodeOpts{mutate: func(c *Config) { c.BindAddr = netip.MustParseAddrPort(seed) }})
	subnets := make([]netip.Prefix, n)
	errs := make([]error, n)
	for i, m := range ms {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := m.WaitSubnet(ctx)
			if err == nil {
				err = m.AddEndpoint(Endpoint{IP: ipIn(p, 2), App: "app", Name: "c"})
			}
			subnets[i], errs[i] = p, err
		})
	}
	wg.Wait()
	seen := map[netip.Prefix]string{a.Subnet(): "cell-a"}
	for i, p := range subnets {
		if errs[i] != nil {
			t.Fatalf("%s: %v", names[i], errs[i])
		}
		if other, dup := seen[p]; dup {
			t.Fatalf("%s and %s both hold %v", names[i], other, p)
		}
		seen[p] = names[i]
	}
	// And they stay distinct once everything has gossiped.
	waitMembers(t, append([]*Mesh{a}, ms...), n+1)
	for i, m := range ms {
		if m.Subnet() != subnets[i] {
			t.Fatalf("%s renumbered from %v to %v", names[i], subnets[i], m.Subnet())
		}
	}
}

// A cell's features reach the others with its metadata, and so does a
// change; a cell that announces none is seen with none.
func TestFeaturesAnnounced(t *testing.T) {
	ms := cluster(t, 2)
	featuresOf := func(m *Mesh, name string) (Features, error) {
		for _, n := range m.Members() {
			if n.Name == name {
				return n.Features, nil
			}
		}
		return 0, fmt.Errorf("%s does not see %s", m.cfg.Name, name)
	}
	if f, err := featuresOf(ms[1], "cell-0"); err != nil || f != 0 {
		t.Fatalf("before SetFeatures: cell-1 sees cell-0 with %v, %v", f, err)
	}
	ms[0].SetFeatures(FeatPartialTCPChecksum)
	if f, _ := featuresOf(ms[0], "cell-0"); f != FeatPartialTCPChecksum {
		t.Fatalf("cell-0 sees itself with %v", f)
	}
	eventually(t, 5*time.Second, "cell-1 sees cell-0's features", func() error {
		if f, err := featuresOf(ms[1], "cell-0"); err != nil || f != FeatPartialTCPChecksum {
			return fmt.Errorf("%v %v", f, err)
		}
		return nil
	})
	if f, _ := featuresOf(ms[0], "cell-1"); f != 0 {
		t.Fatalf("cell-0 sees cell-1 with %v, which announced none", f)
	}
	ms[0].SetFeatures(0)
	eventually(t, 5*time.Second, "cell-1 sees cell-0's features withdrawn", func() error {
		if f, err := featuresOf(ms[1], "cell-0"); err != nil || f != 0 {
			return fmt.Errorf("%v %v", f, err)
		}
		return nil
	})
}

// TestLeaveThenLateUpdate: a leave announcement followed by a metadata
// update still in flight from before it (a cell stopped within a second of
// its start) and then memberlist's death notice: the node is left, not dead.
func TestLeaveThenLateUpdate(t *testing.T) {
	ms := cluster(t, 2)
	a := ms[0]
	ev := (*events)(a)
	n := &memberlist.Node{Name: "ghost", Addr: net.ParseIP("198.18.0.99"), Port: 7946}
	ev.NotifyJoin(n)
	a.mergeLeave(leaveMsg{Node: "ghost", Seq: 1}, &store.Result{})
	ev.NotifyUpdate(n)
	ev.NotifyLeave(n)
	state := func() NodeState {
		for _, x := range a.Members() {
			if x.Name == "ghost" {
				return x.State
			}
		}
		return -1
	}
	if s := state(); s != NodeLeft {
		t.Fatalf("after leave, late update, death: state %v, want %v", s, NodeLeft)
	}
	// Back alive after that: the leave is over, a later death is a death.
	ev.NotifyJoin(n)
	ev.NotifyLeave(n)
	if s := state(); s != NodeDead {
		t.Fatalf("after rejoin and death: state %v, want %v", s, NodeDead)
	}
}
