package mesh

import (
	"net/netip"
	"testing"

	"github.com/hashicorp/memberlist"
	"github.com/weft-net/weft/mesh/store"
)

// Fuzz targets, one per gossip message type: whatever a peer sends must
// not panic, and nothing it sends may be stored unless it is well formed
// and, for signed changes, verified. Each is seeded with a valid message.
// Run one with `go test -run '^$' -fuzz FuzzFullState -fuzztime 20s
// -fuzzminimizetime 2s ./mesh/` (minimising new inputs takes 60 s by default).

// fuzzMesh is a bareMesh with a keyring and a state dir (keyring
// operations persist).
func fuzzMesh(dir string) *Mesh {
	m := bareMesh("cell-a")
	m.cfg.StateDir = dir
	var err error
	if m.keyring, err = memberlist.NewKeyring(nil, testKey); err != nil {
		panic(err)
	}
	return m
}

// checkStored fails t if m holds anything that a peer could not validly
// have sent it.
func checkStored(t *testing.T, m *Mesh) {
	t.Helper()
	if err := m.st.Check(m.pool().Valid); err != nil {
		t.Fatalf("stored %v", err)
	}
	for _, op := range m.kr.ops {
		if err := op.WellFormed(); err != nil {
			t.Fatalf("applied a keyring operation that is not well formed: %+v: %v", op, err)
		}
		if err := m.st.Verify(op.Signer, op.Sig, op.SignedBytes()); err != nil {
			t.Fatalf("applied an unverified keyring operation: %+v: %v", op, err)
		}
	}
}

// fuzzGossip fuzzes the body of NotifyMsg messages of type typ.
func fuzzGossip(f *testing.F, typ byte, seeds ...any) {
	for _, s := range seeds {
		f.Add(store.Encode(typ, s)[1:])
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body []byte) {
		m := fuzzMesh(dir)
		(*delegate)(m).NotifyMsg(append([]byte{typ}, body...))
		checkStored(t, m)
	})
}

func FuzzEndpointMsg(f *testing.F) {
	fuzzGossip(f, store.MsgEndpoint, seedState().Endpoints[0],
		store.EndpointRec{Owner: "cell-b", IP: netip.MustParseAddr("10.255.2.6"), Seq: 9, Deleted: true})
}

func FuzzPolicyMsg(f *testing.F) {
	p := seedState().Policies[0]
	rm := signed(store.PolicyReg{Rule: p.Rule, Stamp: 9, Origin: "cell-b"})
	fuzzGossip(f, store.MsgPolicy, p, rm)
}

func FuzzLeaseMsg(f *testing.F) { fuzzGossip(f, store.MsgLease, seedState().Leases[0]) }

func FuzzLeaveMsg(f *testing.F) { fuzzGossip(f, msgLeave, leaveMsg{Node: "cell-b", Seq: 9}) }

func FuzzRouteMsg(f *testing.F) { fuzzGossip(f, store.MsgRoute, seedState().Routes[0]) }

func FuzzKeyringMsg(f *testing.F) { fuzzGossip(f, store.MsgKeyring, seedState().Keyring[0]) }

// fuzzList fuzzes messages of type typ (store.MsgPolSet or store.MsgFull) and of its
// compressed form z: with raw, body is the compressed stream; else it is
// the JSON, compressed here, so that the fuzzer explores the JSON behind
// the compression.
func fuzzList(f *testing.F, typ, z byte, seed any, apply func(*Mesh, []byte)) {
	js := store.Encode(typ, seed)
	f.Add(js[1:], false)
	f.Add(store.Zip(z, js)[1:], true)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body []byte, raw bool) {
		msg := append([]byte{typ}, body...)
		if raw {
			msg[0] = z
		} else if len(body) > 0 && body[0]&1 == 1 { // the JSON, both ways
			msg = store.Zip(z, msg)
		}
		m := fuzzMesh(dir)
		apply(m, msg)
		checkStored(t, m)
	})
}

func FuzzPolicyBatch(f *testing.F) {
	s := seedState()
	ps := []store.PolicyReg{s.Policies[0], signed(store.PolicyReg{Rule: store.ToWire(rule("a", "b", 1)), Stamp: 4, Origin: "cli@x"})}
	fuzzList(f, store.MsgPolSet, store.MsgPolSetZ, ps, func(m *Mesh, msg []byte) { (*delegate)(m).NotifyMsg(msg) })
}

func FuzzFullState(f *testing.F) {
	fuzzList(f, store.MsgFull, store.MsgFullZ, seedState(), func(m *Mesh, msg []byte) {
		(*delegate)(m).MergeRemoteState(msg, len(msg) > 1 && msg[1]&1 == 1)
	})
}
