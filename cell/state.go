package cell

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Files in a cell's state directory. Secrets are mode 0600.
const (
	ClusterKeyFile   = "cluster.key"   // 32 raw bytes: the gossip encryption key shared by all cells
	WireGuardKeyFile = "wireguard.key" // base64 private key, as `wg genkey` prints it
)

// InitResult describes what Init did.
type InitResult struct {
	StateDir        string
	ClusterKeyNew   bool // false: an existing key was kept
	WireGuardKeyNew bool
	PublicKey       wgtypes.Key
}

// Init makes stateDir (0700; an existing one must pass CheckStateDir) with a cluster key (copied from clusterKeyFile when it
// is not empty) and a WireGuard private key. Existing keys are kept; a
// cluster key that differs from the one to copy is an error and nothing is
// changed.
func Init(stateDir, clusterKeyFile string) (*InitResult, error) {
	if stateDir == "" {
		return nil, errors.New("--state-dir is required")
	}
	var want []byte
	if clusterKeyFile != "" {
		k, err := readClusterKey(clusterKeyFile)
		if err != nil {
			return nil, err
		}
		want = k
	}
	// An existing dir is checked before anything in it is read; a new one
	// (0700) for its parent.
	if err := CheckStateDir(stateDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	if err := CheckStateDir(stateDir); err != nil {
		return nil, err
	}
	ckPath := filepath.Join(stateDir, ClusterKeyFile)
	have, err := readClusterKey(ckPath)
	switch {
	case err == nil && want != nil && !bytes.Equal(have, want):
		return nil, fmt.Errorf("%s exists and differs from %s: remove it first to change the cluster key", ckPath, clusterKeyFile)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	res := &InitResult{StateDir: stateDir}
	if have == nil {
		if want == nil {
			want = make([]byte, 32)
			if _, err := rand.Read(want); err != nil {
				return nil, err
			}
		}
		if err := writeSecret(ckPath, want); err != nil {
			return nil, err
		}
		res.ClusterKeyNew = true
	}
	wgPath := filepath.Join(stateDir, WireGuardKeyFile)
	priv, err := readWireGuardKey(wgPath)
	if errors.Is(err, os.ErrNotExist) {
		priv, err = wgtypes.GeneratePrivateKey()
		if err != nil {
			return nil, err
		}
		if err := writeSecret(wgPath, []byte(priv.String()+"\n")); err != nil {
			return nil, err
		}
		res.WireGuardKeyNew = true
	} else if err != nil {
		return nil, err
	}
	res.PublicKey = priv.PublicKey()
	return res, nil
}

// Keys are a cell's secrets.
type Keys struct {
	Cluster   []byte
	WireGuard wgtypes.Key
}

// LoadKeys checks stateDir (CheckStateDir: its owner and modes, and those
// of every file the agent reads from it) and reads its keys; an
// uninitialised dir is an error that says what to run.
func LoadKeys(stateDir string) (*Keys, error) {
	if err := CheckStateDir(stateDir); err != nil {
		return nil, err
	}
	ck, err := readClusterKey(filepath.Join(stateDir, ClusterKeyFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("state dir %s has no %s: run `weft init --state-dir %s` first", stateDir, ClusterKeyFile, stateDir)
	}
	if err != nil {
		return nil, err
	}
	wk, err := readWireGuardKey(filepath.Join(stateDir, WireGuardKeyFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("state dir %s has no %s: run `weft init --state-dir %s` first", stateDir, WireGuardKeyFile, stateDir)
	}
	if err != nil {
		return nil, err
	}
	return &Keys{Cluster: ck, WireGuard: wk}, nil
}

// readClusterKey accepts 32 raw bytes or their base64 form.
func readClusterKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) == 32 {
		return b, nil
	}
	if k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b))); err == nil && len(k) == 32 {
		return k, nil
	}
	return nil, fmt.Errorf("%s: a cluster key is 32 bytes (raw or base64), this file has %d bytes", path, len(b))
}

func readWireGuardKey(path string) (wgtypes.Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return wgtypes.Key{}, err
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("%s: not a WireGuard key: %w", path, err)
	}
	return k, nil
}

// writeSecret writes data to path with mode 0600, atomically.
func writeSecret(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
