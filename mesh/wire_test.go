package mesh

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"runtime"
	"slices"
	"strings"
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
		{"policy batch Q", zipMsg(msgPolSetZ, listMsg(msgPolSet, n, "[", "{}", "]")), false, false},
		{"policy batch P", listMsg(msgPolSet, n, "[", "{}", "]"), false, false},
		{"unsigned batch Q", zipMsg(msgPolSetZ, listMsg(msgPolSet, n, "[", `{"r":{"s":"a","d":"b","p":6,"a":1,"b":1},"t":1,"o":"x"}`, "]")), false, false},
		{"state Z, policies", zipMsg(msgFullZ, listMsg(msgFull, n, `{"f":"x","p":[`, "{}", "]}")), true, false},
		{"state Z, endpoints", zipMsg(msgFullZ, listMsg(msgFull, n, `{"f":"x","e":[`, "{}", "]}")), true, true},
		{"state Z, leases", zipMsg(msgFullZ, listMsg(msgFull, n, `{"f":"x","l":[`, "{}", "]}")), true, false},
		{"state Z, routes", zipMsg(msgFullZ, listMsg(msgFull, n, `{"f":"x","r":[`, "{}", "]}")), true, false},
		{"state Z, digest", zipMsg(msgFullZ, listMsg(msgFull, n, `{"f":"x","ps":[`, "1", "]}")), true, false},
		{"state Z, spaces", zipState(slices.Concat([]byte{msgFull}, []byte(`{"f":"x"`), bytes.Repeat([]byte{' '}, maxStateJSON), []byte("}"))), true, false},
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
		if len(m.st.pols)+len(m.st.eps)+len(m.st.leases)+len(m.st.routes) > 0 {
			t.Errorf("%s: something was stored", c.name)
		}
	}
}

// TestLargestLegitimateBatch: a batch of maxBatchPolicies registers of the
// largest size a cell makes decodes; one more register is refused.
func TestLargestLegitimateBatch(t *testing.T) {
	p := polEntry{Rule: wireRule{Src: strings.Repeat("s", 128), Dst: strings.Repeat("d", 128), Proto: 6, Start: 65535, End: 65535},
		Present: true, Stamp: 1<<64 - 1, Origin: strings.Repeat("o", maxNameLen),
		Signer: make([]byte, ed25519.PublicKeySize), Sig: make([]byte, ed25519.SignatureSize)}
	if n := len(encode(msgPolicy, p)); n > maxMsg {
		t.Fatalf("the largest register is %d bytes, over maxMsg", n)
	}
	ps := make([]polEntry, maxBatchPolicies)
	for i := range ps {
		ps[i] = p
	}
	msg := encode(msgPolSet, ps)
	for _, m := range [][]byte{msg, zipMsg(msgPolSetZ, msg)} {
		got, err := decodePolicyBatch(m, func(_ polEntry, err error) { t.Errorf("refused a register: %v", err) })
		if err != nil || len(got) != maxBatchPolicies {
			t.Errorf("batch of %d registers (%c): decoded %d, %v", maxBatchPolicies, m[0], len(got), err)
		}
	}
	ps = append(ps, p)
	if _, err := decodePolicyBatch(encode(msgPolSet, ps), nil); err == nil {
		t.Errorf("a batch of %d registers decoded", len(ps))
	}
}

// TestForgedBatchStops: a batch whose register has a wrong signature by a
// trusted key is forged: the registers after it are not merged (each
// would cost a signature check) but counted.
func TestForgedBatchStops(t *testing.T) {
	m := bareMesh("cell-a")
	forged := signed(polEntry{Rule: toWire(rule("evil", "db", 5432)), Present: true, Stamp: 5, Origin: "x"})
	forged.Stamp++ // the signature no longer matches
	good := signed(polEntry{Rule: toWire(rule("web", "db", 5432)), Present: true, Stamp: 5, Origin: "x"})
	(*delegate)(m).NotifyMsg(encode(msgPolSet, []polEntry{forged, good}))
	if len(m.st.pols) != 0 || m.RejectedPolicies() != 2 {
		t.Fatalf("after a forged batch: %d rules, %d rejected; want 0 and 2", len(m.st.pols), m.RejectedPolicies())
	}
	(*delegate)(m).NotifyMsg(encode(msgPolSet, []polEntry{good}))
	if len(m.st.pols) != 1 {
		t.Fatal("the valid register alone was not merged")
	}
}

// TestFullStateDecodes: a state as LocalState makes it, plain and
// compressed, decodes to what was encoded.
func TestFullStateDecodes(t *testing.T) {
	fs := seedState()
	for _, msg := range [][]byte{encode(msgFull, fs), zipState(encode(msgFull, fs))} {
		got, err := decodeFullState(msg, stateRejects{})
		if err != nil {
			t.Fatal(err)
		}
		if a, b := encode(msgFull, got), encode(msgFull, fs); !bytes.Equal(a, b) {
			t.Errorf("decoded %s\nwant %s", a, b)
		}
	}
	for _, bad := range []string{`{"f":"a","f":"b"}`, `{"f":"a"} {}`, `[]`, `{"p":{}}`, `{"f":"` + strings.Repeat("x", maxNameLen+1) + `"}`} {
		if _, err := decodeFullState(append([]byte{msgFull}, bad...), stateRejects{}); err == nil {
			t.Errorf("state %.40s decoded", bad)
		}
	}
}

// seedState is a full state with an entry of every kind, each valid.
func seedState() fullState {
	return fullState{
		From:      "cell-b",
		Seq:       7,
		Leases:    []leaseRec{{Node: "cell-b", Subnet: netip.MustParsePrefix("10.255.2.0/24"), Time: 1, Seq: 7}},
		Endpoints: []epEntry{{Owner: "cell-b", IP: netip.MustParseAddr("10.255.2.5"), App: "web", Name: "c 1 \"a  b\" \\ end", Seq: 7}}, // spaces and escapes in a string stay
		Policies:  []polEntry{signed(polEntry{Rule: toWire(rule("web", "db", 5432)), Present: true, Stamp: 3, Origin: "cli@x"})},
		PolSum:    make([]uint64, polBuckets),
		PolList:   true,
		Routes:    []routeEntry{signedRoute(Route{Host: "api", Domain: "apps.internal", App: "web"}, 3)},
		Keyring:   []KeyringOp{signedKeyringOp(3)},
	}
}

func signedRoute(r Route, stamp uint64) routeEntry {
	c := RouteChange{Route: r, Present: true, Stamp: stamp, Origin: "cli@x"}
	SignRouteChange(&c, testOperator)
	return c.entry()
}

func signedKeyringOp(stamp uint64) KeyringOp {
	op := KeyringOp{Op: KeyInstall, Key: bytes.Repeat([]byte{8}, 32), Stamp: stamp}
	SignKeyringOp(&op, testOperator)
	return op
}

// TestSeedStateMerges: every entry of a valid state is merged (the fuzz
// targets start from it).
func TestSeedStateMerges(t *testing.T) {
	m := fuzzMesh(t.TempDir())
	(*delegate)(m).MergeRemoteState(zipState(encode(msgFull, seedState())), false)
	if len(m.st.pols) != 1 || len(m.st.routes) != 1 || len(m.st.eps) != 1 || len(m.st.leases) != 1 || len(m.kr.ops) != 1 {
		t.Fatalf("merged %d policies, %d routes, %d endpoints, %d leases, %d keyring operations; want one each",
			len(m.st.pols), len(m.st.routes), len(m.st.eps), len(m.st.leases), len(m.kr.ops))
	}
	if m.RejectedPolicies() != 0 || m.RejectedEndpoints() != 0 {
		t.Fatal("a valid state counted rejections")
	}
}
