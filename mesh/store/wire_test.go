package store

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"strings"
	"testing"
)

// TestLargestLegitimateBatch: a batch of MaxBatchPolicies registers of the
// largest size a cell makes decodes; one more register is refused.
func TestLargestLegitimateBatch(t *testing.T) {
	p := PolicyReg{Rule: WireRule{Src: strings.Repeat("s", 128), Dst: strings.Repeat("d", 128), Proto: 6, Start: 65535, End: 65535},
		Present: true, Stamp: 1<<64 - 1, Origin: strings.Repeat("o", MaxNameLen),
		Signer: make([]byte, ed25519.PublicKeySize), Sig: make([]byte, ed25519.SignatureSize)}
	if n := len(Encode(MsgPolicy, p)); n > MaxMsg {
		t.Fatalf("the largest register is %d bytes, over MaxMsg", n)
	}
	ps := make([]PolicyReg, MaxBatchPolicies)
	for i := range ps {
		ps[i] = p
	}
	msg := Encode(MsgPolSet, ps)
	for _, m := range [][]byte{msg, Zip(MsgPolSetZ, msg)} {
		got, err := DecodePolicyBatch(m, func(_ PolicyReg, err error) { t.Errorf("refused a register: %v", err) })
		if err != nil || len(got) != MaxBatchPolicies {
			t.Errorf("batch of %d registers (%c): decoded %d, %v", MaxBatchPolicies, m[0], len(got), err)
		}
	}
	ps = append(ps, p)
	if _, err := DecodePolicyBatch(Encode(MsgPolSet, ps), nil); err == nil {
		t.Errorf("a batch of %d registers decoded", len(ps))
	}
}

// seedState is a full state with an entry of every kind, each valid.
func seedState() FullState {
	rc := RouteChange{Route: Route{Host: "api", Domain: "apps.internal", App: "web"}, Present: true, Stamp: 3, Origin: "cli@x"}
	SignRouteChange(&rc, testOperator)
	op := KeyringOp{Op: KeyInstall, Key: bytes.Repeat([]byte{8}, 32), Stamp: 3}
	SignKeyringOp(&op, testOperator)
	return FullState{
		From:      "cell-b",
		Seq:       7,
		Leases:    []LeaseRec{{Node: "cell-b", Subnet: netip.MustParsePrefix("10.255.2.0/24"), Time: 1, Seq: 7}},
		Endpoints: []EndpointRec{{Owner: "cell-b", IP: netip.MustParseAddr("10.255.2.5"), App: "web", Name: "c 1 \"a  b\" \\ end", Seq: 7}}, // spaces and escapes in a string stay
		Policies:  []PolicyReg{signed(PolicyReg{Rule: ToWire(rule("web", "db", 5432)), Present: true, Stamp: 3, Origin: "cli@x"})},
		PolSum:    make([]uint64, DigestBuckets),
		PolList:   true,
		Routes:    []RouteReg{rc.Reg()},
		Keyring:   []KeyringOp{op},
	}
}

// TestFullStateDecodes: a state as State makes it, plain and compressed,
// decodes to what was encoded; malformed states are refused.
func TestFullStateDecodes(t *testing.T) {
	fs := seedState()
	for _, msg := range [][]byte{Encode(MsgFull, fs), ZipState(Encode(MsgFull, fs))} {
		got, err := DecodeFullState(msg, Rejects{})
		if err != nil {
			t.Fatal(err)
		}
		if a, b := Encode(MsgFull, got), Encode(MsgFull, fs); !bytes.Equal(a, b) {
			t.Errorf("decoded %s\nwant %s", a, b)
		}
	}
	for _, bad := range []string{`{"f":"a","f":"b"}`, `{"f":"a"} {}`, `[]`, `{"p":{}}`, `{"f":"` + strings.Repeat("x", MaxNameLen+1) + `"}`} {
		if _, err := DecodeFullState(append([]byte{MsgFull}, bad...), Rejects{}); err == nil {
			t.Errorf("state %.40s decoded", bad)
		}
	}
}
