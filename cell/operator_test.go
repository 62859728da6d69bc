package cell

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/weft-net/weft/policy"
)

// TestInitOperators: the first cell makes and trusts an operator key;
// a cell initialised with --cluster-key trusts the same keys and holds
// none; --operator-pub trusts the given keys instead.
func TestInitOperators(t *testing.T) {
	d1, d2, d3 := t.TempDir(), t.TempDir(), t.TempDir()
	if _, err := Init(d1, ""); err != nil {
		t.Fatal(err)
	}
	r1, err := InitOperators(d1, "", "")
	if err != nil || !r1.KeyNew || len(r1.Trusted) != 1 {
		t.Fatalf("first cell: %+v %v", r1, err)
	}
	for f, mode := range map[string]os.FileMode{OperatorKeyFile: 0o600, OperatorsPubFile: 0o644} {
		fi, err := os.Stat(filepath.Join(d1, f))
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: %v mode %v, want %v", f, err, fi.Mode().Perm(), mode)
		}
	}
	// Again: everything kept.
	if r, err := InitOperators(d1, "", ""); err != nil || r.KeyNew || !slices.Equal(r.Trusted, r1.Trusted) {
		t.Fatalf("second init: %+v %v", r, err)
	}

	r2, err := InitOperators(d2, filepath.Join(d1, ClusterKeyFile), "")
	if err != nil || r2.HasKey || !slices.Equal(r2.Trusted, r1.Trusted) {
		t.Fatalf("joining cell: %+v %v", r2, err)
	}
	priv, trusted, err := LoadOperators(d2)
	if err != nil || priv != nil || len(trusted) != 1 {
		t.Fatalf("LoadOperators(joining cell) = %v, %d keys, %v", priv, len(trusted), err)
	}

	r3, err := InitOperators(d3, "", filepath.Join(d1, OperatorsPubFile))
	if err != nil || r3.HasKey || !slices.Equal(r3.Trusted, r1.Trusted) {
		t.Fatalf("--operator-pub: %+v %v", r3, err)
	}
	// A change signed with the key verifies under the API types.
	key, _, err := LoadOperators(d1)
	if err != nil {
		t.Fatal(err)
	}
	r := policy.Rule{Source: "a", Destination: "b", Protocol: policy.ProtoTCP, Ports: policy.PortRange{Start: 1, End: 1}}
	ch := SignPolicyChange(r, true, "cli@test", 0, key)
	if len(ch.Sig) == 0 || ch.Stamp == 0 {
		t.Fatalf("unsigned change %+v", ch)
	}
	if ch2 := SignPolicyChange(r, true, "cli@test", 1<<62, key); ch2.Stamp != 1<<62+1 {
		t.Fatalf("stamp above minStamp: %d", ch2.Stamp)
	}
}
