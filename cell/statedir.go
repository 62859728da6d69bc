package cell

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/weft-net/weft/mesh"
)

// CheckStateDir refuses a state dir that someone other than root (or the
// agent's effective uid) could change, as ssh's StrictModes does: the dir
// and each of weft's files in it must be owned by root or the euid and not
// writable by group or others; the secret files must not be readable by
// them either; the dir's parent must be owned by root or the euid and not
// writable by group or others unless it is sticky (/tmp). Only the dir,
// its parent and weft's files are checked, not every ancestor. Symlinks
// are followed and their targets checked. A missing dir or file is not an
// error here (the callers say what to run). The error names the path,
// the owner or mode found and the command that fixes it; nothing is
// changed.
func CheckStateDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state dir %s is not a directory", dir)
	}
	if err := checkOwnerMode(dir, dir, fi, false); err != nil {
		return err
	}
	parent := filepath.Dir(mustAbs(dir))
	pfi, err := os.Stat(parent)
	if err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	if err := checkOwnerMode(dir, parent, pfi, false); err != nil {
		return err
	}
	for _, name := range stateDirFiles() {
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("state dir %s: %w", dir, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("state dir %s: %s is %s, want a regular file", dir, path, describeFile(fi))
		}
		if err := checkOwnerMode(dir, path, fi, isSecretFile(name)); err != nil {
			return err
		}
	}
	return nil
}

// stateDirFiles are the files of a state dir that CheckStateDir checks.
func stateDirFiles() []string {
	return append([]string{ClusterKeyFile, WireGuardKeyFile, OperatorKeyFile, OperatorsPubFile}, mesh.StateFiles...)
}

func isSecretFile(name string) bool {
	return name == ClusterKeyFile || name == WireGuardKeyFile || name == OperatorKeyFile ||
		slices.Contains(mesh.SecretStateFiles, name)
}

// checkOwnerMode checks one path of state dir dir. A sticky directory
// (only owners may remove or rename its entries) may be writable by all.
func checkOwnerMode(dir, path string, fi fs.FileInfo, secret bool) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("state dir %s: cannot read the owner of %s", dir, path)
	}
	euid := uint32(os.Geteuid())
	if st.Uid != 0 && st.Uid != euid {
		return fmt.Errorf("state dir %s: %s is owned by uid %d, not root or uid %d (the agent): "+
			"anyone with that uid could change it; check its contents, then `chown %d %s`", dir, path, st.Uid, euid, euid, path)
	}
	perm := fi.Mode().Perm()
	if perm&0o022 != 0 && !(fi.IsDir() && fi.Mode()&fs.ModeSticky != 0 && path != dir) {
		return fmt.Errorf("state dir %s: %s is mode %04o, writable by group or others: "+
			"check its contents, then `chmod go-w %s`", dir, path, perm, path)
	}
	if secret && perm&0o077 != 0 {
		return fmt.Errorf("state dir %s: %s is mode %04o, a secret readable by group or others: "+
			"`chmod 600 %s` (and consider the key disclosed)", dir, path, perm, path)
	}
	return nil
}
