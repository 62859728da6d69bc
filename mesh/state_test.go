package mesh

import (
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/weft-net/weft/mesh/store"
)

// bareMesh is a Mesh without memberlist, for the merge logic.
func bareMesh(name string) *Mesh {
	cfg, err := Config{Name: name, ClusterKey: testKey, StateDir: "unused"}.withDefaults()
	if err != nil {
		panic(err)
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	m := &Mesh{
		recSeen:   map[string]time.Time{},
		outboxes:  map[string]*outbox{},
		cfg:       cfg,
		log:       cfg.Logger,
		st:        store.New(name, []ed25519.PublicKey{testOperator.Public().(ed25519.PublicKey)}, cfg.Logger),
		nodes:     map[string]*member{},
		leaseWait: make(chan struct{}),
		queue:     &memberlist.TransmitLimitedQueue{NumNodes: func() int { return 1 }, RetransmitMult: 4},
	}
	m.queue.QueueBroadcast(sentinel{})
	return m
}

func TestOwnerAuthoritativeState(t *testing.T) {
	m := bareMesh("me")
	sub := netip.MustParsePrefix("10.255.7.0/24")
	m.st.PutLease(store.LeaseRec{Node: "o", Subnet: sub, Time: 1, Seq: 1})
	ip := netip.MustParseAddr("10.255.7.9")
	d := (*delegate)(m)
	d.MergeRemoteState(store.Encode(store.MsgFull, store.FullState{From: "o", Seq: 10,
		Endpoints: []store.EndpointRec{{Owner: "o", IP: ip, App: "app", Seq: 5}}}), false)
	if got := endpointSet(m.Endpoints()); got != "10.255.7.9=app/@o" {
		t.Fatalf("endpoints %q", got)
	}
	// The owner no longer lists it (tombstone pruned there): gone.
	d.MergeRemoteState(store.Encode(store.MsgFull, store.FullState{From: "o", Seq: 20}), false)
	if got := endpointSet(m.Endpoints()); got != "" {
		t.Fatalf("endpoints after owner dropped it: %q", got)
	}
	// A stale third party cannot bring it back.
	d.MergeRemoteState(store.Encode(store.MsgFull, store.FullState{From: "p", Seq: 99,
		Endpoints: []store.EndpointRec{{Owner: "o", IP: ip, App: "app", Seq: 5}}}), false)
	if got := endpointSet(m.Endpoints()); got != "" {
		t.Fatalf("stale entry resurrected: %q", got)
	}

	// Someone holds a live entry of ours we do not know: we tombstone it.
	mine := store.EndpointRec{Owner: "me", IP: netip.MustParseAddr("10.255.1.3"), App: "old", Seq: 1 << 62}
	d.NotifyMsg(store.Encode(store.MsgEndpoint, mine))
	got, _ := m.st.Endpoint("me", mine.IP)
	if !got.Deleted || got.Seq <= mine.Seq || m.pendingBroadcasts() != 1 {
		t.Fatalf("own stale entry: %+v, queued %d", got, m.pendingBroadcasts())
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
