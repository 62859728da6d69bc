package mesh

import (
	"github.com/weft-net/weft/mesh/store"

	"bytes"
	"net/netip"
	"runtime"
	"slices"
	"testing"
)

// listMsg is a message of type typ whose JSON is open, n copies of elem
// separated by commas, and close.
func listMsg(typ byte, n int, open, elem, close string) []byte {
	var b bytes.Buffer
	b.WriteByte(typ)
	b.WriteString(open)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(elem)
	}
	b.WriteString(close)
	return b.Bytes()
}

// allocated returns the bytes allocated while f ran.
func allocated(f func()) uint64 {
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	f()
	runtime.ReadMemStats(&m1)
	return m1.TotalAlloc - m0.TotalAlloc
}

// TestHostileMessagesBounded: a small compressed message of a million
// empty entries (as a cluster-key holder can send) is refused and counted,
// and handling it allocates little. It used to allocate some 700 MB (a
// policy batch) and 2 GB (3M entries), and count nothing.
func TestHostileMessagesBounded(t *testing.T) {
	const n = 1_000_000
	const bound = 16 << 20 // bytes allocated while handling one message
	for _, c := range []struct {
		name  string
		msg   []byte
		state bool // a push/pull state, else a gossip/user message
		eps   bool // counted in RejectedEndpoints, else RejectedPolicies
	}{
		{"policy batch Q", store.Zip(store.MsgPolSetZ, listMsg(store.MsgPolSet, n, "[", "{}", "]")), false, false},
		{"policy batch P", listMsg(store.MsgPolSet, n, "[", "{}", "]"), false, false},
		{"unsigned batch Q", store.Zip(store.MsgPolSetZ, listMsg(store.MsgPolSet, n, "[", `{"r":{"s":"a","d":"b","p":6,"a":1,"b":1},"t":1,"o":"x"}`, "]")), false, false},
		{"state Z, policies", store.Zip(store.MsgFullZ, listMsg(store.MsgFull, n, `{"f":"x","p":[`, "{}", "]}")), true, false},
		{"state Z, endpoints", store.Zip(store.MsgFullZ, listMsg(store.MsgFull, n, `{"f":"x","e":[`, "{}", "]}")), true, true},
		{"state Z, leases", store.Zip(store.MsgFullZ, listMsg(store.MsgFull, n, `{"f":"x","l":[`, "{}", "]}")), true, false},
		{"state Z, routes", store.Zip(store.MsgFullZ, listMsg(store.MsgFull, n, `{"f":"x","r":[`, "{}", "]}")), true, false},
		{"state Z, digest", store.Zip(store.MsgFullZ, listMsg(store.MsgFull, n, `{"f":"x","ps":[`, "1", "]}")), true, false},
		{"state Z, spaces", store.ZipState(slices.Concat([]byte{store.MsgFull}, []byte(`{"f":"x"`), bytes.Repeat([]byte{' '}, store.MaxStateJSON), []byte("}"))), true, false},
	} {
		m := bareMesh("cell-a")
		var rejPol, rejEp uint64
		alloc := allocated(func() {
			if c.state {
				(*delegate)(m).MergeRemoteState(c.msg, false)
			} else {
				(*delegate)(m).NotifyMsg(c.msg)
			}
			rejPol, rejEp = m.RejectedPolicies(), m.RejectedEndpoints()
		})
		t.Logf("%s: %d-byte message, %.2f MB allocated, rejected: %d policies, %d endpoints",
			c.name, len(c.msg), float64(alloc)/1e6, rejPol, rejEp)
		if alloc > bound {
			t.Errorf("%s: handling it allocated %d bytes, want at most %d", c.name, alloc, bound)
		}
		if rejPol == 0 || c.eps && rejEp == 0 {
			t.Errorf("%s: not counted (rejected %d policies, %d endpoints)", c.name, rejPol, rejEp)
		}
		if m.st.NumPolicies()+m.st.NumEndpoints()+m.st.NumLeases()+m.st.NumRoutes() > 0 {
			t.Errorf("%s: something was stored", c.name)
		}
	}
}

// seedState is a full state with an entry of every kind, each valid.
func seedState() store.FullState {
	return store.FullState{
		From:      "cell-b",
		Seq:       7,
		Leases:    []store.LeaseRec{{Node: "cell-b", Subnet: netip.MustParsePrefix("10.255.2.0/24"), Time: 1, Seq: 7}},
		Endpoints: []store.EndpointRec{{Owner: "cell-b", IP: netip.MustParseAddr("10.255.2.5"), App: "web", Name: "c 1 \"a  b\" \\ end", Seq: 7}}, // spaces and escapes in a string stay
		Policies:  []store.PolicyReg{signed(store.PolicyReg{Rule: store.ToWire(rule("web", "db", 5432)), Present: true, Stamp: 3, Origin: "cli@x"})},
		PolSum:    make([]uint64, store.DigestBuckets),
		PolList:   true,
		Routes:    []store.RouteReg{signedRoute(store.Route{Host: "api", Domain: "apps.internal", App: "web"}, 3)},
		Keyring:   []store.KeyringOp{signedKeyringOp(3)},
	}
}

func signedRoute(r store.Route, stamp uint64) store.RouteReg {
	c := store.RouteChange{Route: r, Present: true, Stamp: stamp, Origin: "cli@x"}
	store.SignRouteChange(&c, testOperator)
	return c.Reg()
}

func signedKeyringOp(stamp uint64) store.KeyringOp {
	op := store.KeyringOp{Op: store.KeyInstall, Key: bytes.Repeat([]byte{8}, 32), Stamp: stamp}
	store.SignKeyringOp(&op, testOperator)
	return op
}

// TestSeedStateMerges: every entry of a valid state is merged (the fuzz
// targets start from it).
func TestSeedStateMerges(t *testing.T) {
	m := fuzzMesh(t.TempDir())
	(*delegate)(m).MergeRemoteState(store.ZipState(store.Encode(store.MsgFull, seedState())), false)
	if m.st.NumPolicies() != 1 || m.st.NumRoutes() != 1 || m.st.NumEndpoints() != 1 || m.st.NumLeases() != 1 || len(m.kr.ops) != 1 {
		t.Fatalf("merged %d policies, %d routes, %d endpoints, %d leases, %d keyring operations; want one each",
			m.st.NumPolicies(), m.st.NumRoutes(), m.st.NumEndpoints(), m.st.NumLeases(), len(m.kr.ops))
	}
	if m.RejectedPolicies() != 0 || m.RejectedEndpoints() != 0 {
		t.Fatal("a valid state counted rejections")
	}
}
