package cell

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const nobody = 65534

// wantErr fails t unless err names every one of parts.
func wantErr(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: accepted", what)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("%s: error %q does not say %q", what, err, p)
		}
	}
}

// TestInitRefusesWritableStateDir: `weft init` on an existing dir others
// may write refuses, says how to fix it and changes nothing.
func TestInitRefusesWritableStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := Init(dir, "")
	wantErr(t, "Init of a 0777 dir", err, dir, "mode 0777", "chmod go-w "+dir)
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o777 {
		t.Fatalf("Init changed the mode to %v", fi.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("Init wrote into the refused dir: %v", ents)
	}

	owned := filepath.Join(t.TempDir(), "owned")
	if err := os.Mkdir(owned, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(owned, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	_, err = Init(owned, "")
	wantErr(t, "Init of a dir owned by nobody", err, owned, "uid 65534", "chown")

	// A new dir under a parent anyone may write (not sticky) is refused
	// too: they could rename it away and put their own in its place.
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	_, err = Init(filepath.Join(open, "state"), "")
	wantErr(t, "Init under a 0777 parent", err, open+" is mode 0777")

	// Sticky like /tmp is fine.
	os.Chmod(open, 0o777|os.ModeSticky)
	if _, err := Init(filepath.Join(open, "state"), ""); err != nil {
		t.Fatalf("Init under a sticky 1777 parent: %v", err)
	}
}

// TestLoadKeysRefusesFilesOthersControl: the agent refuses a state dir
// whose files someone other than root owns or may write (a uid-65534 user
// replaced operators.pub), and secrets others may read.
func TestLoadKeysRefusesFilesOthersControl(t *testing.T) {
	cases := []struct {
		name  string
		file  string
		mode  os.FileMode // 0: keep
		owner int         // 0: keep
		want  []string
	}{
		{"operators.pub owned by nobody", OperatorsPubFile, 0, nobody, []string{"uid 65534", "chown"}},
		{"operators.pub world-writable", OperatorsPubFile, 0o666, 0, []string{"mode 0666", "chmod go-w"}},
		{"state.json group-writable", "state.json", 0o620, 0, []string{"mode 0620", "chmod go-w"}},
		{"lease.json owned by nobody", "lease.json", 0, nobody, []string{"uid 65534"}},
		{"cluster.key readable by others", ClusterKeyFile, 0o644, 0, []string{"mode 0644", "chmod 600"}},
		{"wireguard.key readable by group", WireGuardKeyFile, 0o640, 0, []string{"mode 0640", "chmod 600"}},
		{"operator.key owned by nobody", OperatorKeyFile, 0, nobody, []string{"uid 65534"}},
		{"keyring.json readable", "keyring.json", 0o604, 0, []string{"mode 0604", "chmod 600"}},
		{"state dir world-writable", ".", 0o757, 0, []string{"mode 0757"}},
		{"state dir owned by nobody", ".", 0, nobody, []string{"uid 65534"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			if _, err := Init(dir, ""); err != nil {
				t.Fatal(err)
			}
			if _, err := InitOperators(dir, "", ""); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"state.json", "lease.json", "keyring.json"} {
				if err := writeSecret(filepath.Join(dir, f), []byte("{}")); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := LoadKeys(dir); err != nil {
				t.Fatalf("LoadKeys of a good dir: %v", err)
			}
			path := filepath.Clean(filepath.Join(dir, c.file))
			if c.mode != 0 {
				if err := os.Chmod(path, c.mode); err != nil {
					t.Fatal(err)
				}
			}
			if c.owner != 0 {
				if err := os.Chown(path, c.owner, c.owner); err != nil {
					t.Fatal(err)
				}
			}
			_, err := LoadKeys(dir)
			wantErr(t, "LoadKeys", err, append([]string{path}, c.want...)...)
		})
	}
}

// TestCheckStateDirFollowsSymlinks: a key file that is a symlink is
// judged by its target.
func TestCheckStateDirFollowsSymlinks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if _, err := Init(dir, ""); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "pub")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, OperatorsPubFile)); err != nil {
		t.Fatal(err)
	}
	if err := CheckStateDir(dir); err != nil {
		t.Fatalf("symlink to a root-owned 0644 file: %v", err)
	}
	os.Chown(target, nobody, nobody)
	wantErr(t, "symlink to a file owned by nobody", CheckStateDir(dir), "uid 65534")
}
