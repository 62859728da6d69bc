package mesh

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// Cluster key rotation without downtime, through memberlist's keyring: a
// cell decrypts gossip with any installed key and encrypts with the primary
// one. An operator installs a new key everywhere, makes it the primary, then
// removes the old one. Each step is an operator-signed KeyringOp, applied by
// the cell it is given to, gossiped to every other cell (and carried in
// push/pull, so a cell that was away catches up), and persisted in
// keyring.json (keys primary first, the last applied stamp, the recent
// operations). Operations apply in stamp order: one not newer than the last
// applied is ignored, so an old signed operation cannot be replayed.

// Keyring operations.
const (
	KeyInstall = "install" // add Key to the keyring
	KeyUse     = "use"     // add Key if missing and make it the primary key
	KeyRemove  = "remove"  // remove the key whose Fingerprint is KeyID
)

const (
	keyringFileName = "keyring.json"
	keyringOpsKept  = 16 // recent operations kept and sent in push/pull
	msgKeyring      = byte('k')
)

// KeyringOp is one operator-signed change of the cluster keyring.
type KeyringOp struct {
	Op     string            `json:"op"`
	Key    []byte            `json:"key,omitempty"`    // install, use: 32 bytes
	KeyID  string            `json:"key_id,omitempty"` // remove: Fingerprint of the key
	Stamp  uint64            `json:"t"`                // orders operations; wall-clock ns of the signer
	Signer ed25519.PublicKey `json:"k"`
	Sig    []byte            `json:"g"`
}

// keyringState is what keyring.json holds besides the keys.
type keyringState struct {
	stamp uint64      // of the last applied operation
	ops   []KeyringOp // the last keyringOpsKept applied, by stamp
}

type keyringFileData struct {
	Keys  [][]byte    `json:"keys"` // primary first
	Stamp uint64      `json:"stamp"`
	Ops   []KeyringOp `json:"ops"`
}

// SignKeyringOp signs op with priv and sets op.Signer and op.Sig.
func SignKeyringOp(op *KeyringOp, priv ed25519.PrivateKey) {
	op.Signer = priv.Public().(ed25519.PublicKey)
	op.Sig = ed25519.Sign(priv, op.signedBytes())
}

func (op *KeyringOp) signedBytes() []byte {
	b := append([]byte(nil), "weft keyring op v1\x00"...)
	b = appendStr(b, op.Op)
	b = appendStr(b, string(op.Key))
	b = appendStr(b, op.KeyID)
	return binary.BigEndian.AppendUint64(b, op.Stamp)
}

func (op *KeyringOp) validate() error {
	switch op.Op {
	case KeyInstall, KeyUse:
		if len(op.Key) != 32 {
			return fmt.Errorf("keyring %s: a cluster key is 32 bytes, not %d", op.Op, len(op.Key))
		}
	case KeyRemove:
		if op.KeyID == "" || len(op.KeyID) > 64 {
			return errors.New("keyring remove: no key id")
		}
	default:
		return fmt.Errorf("unknown keyring operation %q", op.Op)
	}
	return nil
}

// loadKeyring builds the memberlist keyring: from keyring.json if it
// exists (it replaces Config.ClusterKey), else from Config.ClusterKey.
func (m *Mesh) loadKeyring() error {
	var kf keyringFileData
	ok, err := readJSON(filepath.Join(m.cfg.StateDir, keyringFileName), &kf)
	if err != nil {
		return err
	}
	if !ok || len(kf.Keys) == 0 {
		m.keyring, err = memberlist.NewKeyring(nil, m.cfg.ClusterKey)
		return err
	}
	m.keyring, err = memberlist.NewKeyring(kf.Keys[1:], kf.Keys[0])
	if err != nil {
		return fmt.Errorf("mesh: %s: %w", keyringFileName, err)
	}
	m.kr = keyringState{stamp: kf.Stamp, ops: kf.Ops}
	if !bytes.Equal(kf.Keys[0], m.cfg.ClusterKey) {
		m.log.Info("using the cluster keyring of "+keyringFileName, "primary", Fingerprint(kf.Keys[0]), "keys", len(kf.Keys))
	}
	return nil
}

// Keyring returns the fingerprints of the installed cluster keys, the
// primary key first.
func (m *Mesh) Keyring() []string {
	var out []string
	for _, k := range m.keyring.GetKeys() {
		out = append(out, Fingerprint(k))
	}
	return out
}

// ApplyKeyringOp verifies an operator-signed keyring operation, applies it
// to this cell's keyring, persists it and gossips it to every other cell.
// An operation not newer than the last applied one is refused.
func (m *Mesh) ApplyKeyringOp(op KeyringOp) error {
	if err := op.validate(); err != nil {
		return err
	}
	if err := m.verifySig(op.Signer, op.Sig, op.signedBytes()); err != nil {
		m.rejectSigned("keyring operation", "local API", err)
		return fmt.Errorf("keyring operation refused: %w", err)
	}
	m.mu.Lock()
	if op.Stamp <= m.kr.stamp {
		last := m.kr.stamp
		m.mu.Unlock()
		return fmt.Errorf("keyring operation refused: stamp %d is not newer than the last applied one (%d)", op.Stamp, last)
	}
	err := m.applyKeyringLocked(op)
	m.mu.Unlock()
	m.queue.QueueBroadcast(keyringBroadcast(op))
	if perr := m.persistKeyring(); perr != nil {
		return errors.Join(err, perr)
	}
	return err
}

// SignKeyringOp signs op with this cell's operator key (stamped with the
// wall clock, above the last applied operation) and applies it like
// ApplyKeyringOp.
func (m *Mesh) SignKeyringOp(op KeyringOp) error {
	if m.cfg.OperatorKey == nil {
		return ErrNoOperatorKey
	}
	m.mu.Lock()
	op.Stamp = max(uint64(time.Now().UnixNano()), m.kr.stamp+1)
	m.mu.Unlock()
	SignKeyringOp(&op, m.cfg.OperatorKey)
	return m.ApplyKeyringOp(op)
}

func keyringBroadcast(op KeyringOp) *broadcast {
	return &broadcast{name: fmt.Sprintf("k/%d", op.Stamp), msg: encode(msgKeyring, op)}
}

// mergeKeyringLocked applies a verified-or-not keyring operation from a
// peer, if it is newer than the last applied one.
func (m *Mesh) mergeKeyringLocked(op KeyringOp, relay bool, res *mergeResult) {
	if op.Stamp <= m.kr.stamp || op.validate() != nil {
		return
	}
	if err := m.verifySig(op.Signer, op.Sig, op.signedBytes()); err != nil {
		m.rejectSigned("keyring operation", "gossip", err)
		return
	}
	if err := m.applyKeyringLocked(op); err != nil {
		m.log.Error("keyring operation failed", "op", op.Op, "err", err)
	}
	res.keyring = true
	if relay {
		res.send(keyringBroadcast(op))
	}
}

// applyKeyringLocked applies a verified op newer than the last applied one
// and records it. An op that fails (removing the primary key) is recorded
// as applied all the same, so that it is not retried forever.
func (m *Mesh) applyKeyringLocked(op KeyringOp) error {
	m.kr.stamp = op.Stamp
	m.kr.ops = append(m.kr.ops, op)
	if n := len(m.kr.ops); n > keyringOpsKept {
		m.kr.ops = slices.Clone(m.kr.ops[n-keyringOpsKept:])
	}
	var err error
	switch op.Op {
	case KeyInstall:
		err = m.keyring.AddKey(op.Key)
	case KeyUse:
		if err = m.keyring.AddKey(op.Key); err == nil {
			err = m.keyring.UseKey(op.Key)
		}
	case KeyRemove:
		for _, k := range m.keyring.GetKeys() {
			if Fingerprint(k) == op.KeyID {
				err = m.keyring.RemoveKey(k)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("keyring %s: %w", op.Op, err)
	}
	m.log.Info("cluster keyring changed", "op", op.Op, "signer", Fingerprint(op.Signer), "keys", m.Keyring())
	return nil
}

// persistKeyring writes keyring.json and, if configured, the primary key
// to Config.ClusterKeyFile.
func (m *Mesh) persistKeyring() error {
	m.persistMu.Lock()
	defer m.persistMu.Unlock()
	m.mu.Lock()
	kf := keyringFileData{Keys: m.keyring.GetKeys(), Stamp: m.kr.stamp, Ops: slices.Clone(m.kr.ops)}
	m.mu.Unlock()
	b, err := json.Marshal(kf)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(m.cfg.StateDir, keyringFileName), b); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	if m.cfg.ClusterKeyFile != "" && len(kf.Keys) > 0 {
		if err := writeFileAtomic(m.cfg.ClusterKeyFile, kf.Keys[0]); err != nil {
			return fmt.Errorf("mesh: %w", err)
		}
	}
	return nil
}

// keyringOpsLocked returns the recent operations, for push/pull.
func (m *Mesh) keyringOpsLocked() []KeyringOp { return slices.Clone(m.kr.ops) }
