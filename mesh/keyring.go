package mesh

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/weft-net/weft/mesh/store"
)

// Cluster key rotation without downtime, through memberlist's keyring: a
// cell decrypts gossip with any installed key and encrypts with the primary
// one. An operator installs a new key everywhere, makes it the primary, then
// removes the old one. Each step is an operator-signed store.KeyringOp, applied by
// the cell it is given to, gossiped to every other cell (and carried in
// push/pull, so a cell that was away catches up), and persisted in
// keyring.json (keys primary first, the last applied stamp, the recent
// operations). Operations apply in stamp order: one not newer than the last
// applied is ignored, so an old signed operation cannot be replayed.

const keyringFileName = "keyring.json"

// keyringState is what keyring.json holds besides the keys.
type keyringState struct {
	stamp uint64            // of the last applied operation
	ops   []store.KeyringOp // the last store.KeyringOpsKept applied, by stamp
}

type keyringFileData struct {
	Keys  [][]byte          `json:"keys"` // primary first
	Stamp uint64            `json:"stamp"`
	Ops   []store.KeyringOp `json:"ops"`
}

// loadKeyring builds the memberlist keyring: from keyring.json if it
// exists (it replaces Config.ClusterKey), else from Config.ClusterKey.
func (m *Mesh) loadKeyring() error {
	var kf keyringFileData
	ok, err := store.ReadJSON(filepath.Join(m.cfg.StateDir, keyringFileName), &kf)
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
		m.log.Info("using the cluster keyring of "+keyringFileName, "primary", store.Fingerprint(kf.Keys[0]), "keys", len(kf.Keys))
	}
	return nil
}

// Keyring returns the fingerprints of the installed cluster keys, the
// primary key first.
func (m *Mesh) Keyring() []string {
	var out []string
	for _, k := range m.keyring.GetKeys() {
		out = append(out, store.Fingerprint(k))
	}
	return out
}

// ApplyKeyringOp verifies an operator-signed keyring operation, applies it
// to this cell's keyring, persists it and gossips it to every other cell.
// An operation not newer than the last applied one is refused.
func (m *Mesh) ApplyKeyringOp(op store.KeyringOp) error {
	if err := op.Validate(); err != nil {
		return err
	}
	if err := m.st.Verify(op.Signer, op.Sig, op.SignedBytes()); err != nil {
		m.st.RejectSigned("keyring operation", "local API", err)
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
	m.queue.QueueBroadcast(bcast(store.KeyringMsg(op)))
	if perr := m.persistKeyring(); perr != nil {
		return errors.Join(err, perr)
	}
	return err
}

// SignKeyringOp signs op with this cell's operator key (stamped with the
// wall clock, above the last applied operation) and applies it like
// ApplyKeyringOp.
func (m *Mesh) SignKeyringOp(op store.KeyringOp) error {
	if m.cfg.OperatorKey == nil {
		return store.ErrNoOperatorKey
	}
	m.mu.Lock()
	op.Stamp = max(uint64(time.Now().UnixNano()), m.kr.stamp+1)
	m.mu.Unlock()
	store.SignKeyringOp(&op, m.cfg.OperatorKey)
	return m.ApplyKeyringOp(op)
}

// mergeKeyringLocked applies a verified-or-not keyring operation from a
// peer, if it is newer than the last applied one.
func (m *Mesh) mergeKeyringLocked(op store.KeyringOp, relay bool, res *store.Result) {
	if op.Stamp <= m.kr.stamp || op.Validate() != nil {
		return
	}
	if err := m.st.Verify(op.Signer, op.Sig, op.SignedBytes()); err != nil {
		m.st.RejectSigned("keyring operation", "gossip", err)
		return
	}
	if err := m.applyKeyringLocked(op); err != nil {
		m.log.Error("keyring operation failed", "op", op.Op, "err", err)
	}
	res.Keyring = true
	if relay {
		res.Send(store.KeyringMsg(op))
	}
}

// applyKeyringLocked applies a verified op newer than the last applied one
// and records it. An op that fails (removing the primary key) is recorded
// as applied all the same, so that it is not retried forever.
func (m *Mesh) applyKeyringLocked(op store.KeyringOp) error {
	m.kr.stamp = op.Stamp
	m.kr.ops = append(m.kr.ops, op)
	if n := len(m.kr.ops); n > store.KeyringOpsKept {
		m.kr.ops = slices.Clone(m.kr.ops[n-store.KeyringOpsKept:])
	}
	var err error
	switch op.Op {
	case store.KeyInstall:
		err = m.keyring.AddKey(op.Key)
	case store.KeyUse:
		if err = m.keyring.AddKey(op.Key); err == nil {
			err = m.keyring.UseKey(op.Key)
		}
	case store.KeyRemove:
		for _, k := range m.keyring.GetKeys() {
			if store.Fingerprint(k) == op.KeyID {
				err = m.keyring.RemoveKey(k)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("keyring %s: %w", op.Op, err)
	}
	m.log.Info("cluster keyring changed", "op", op.Op, "signer", store.Fingerprint(op.Signer), "keys", m.Keyring())
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
	if err := store.WriteFileAtomic(filepath.Join(m.cfg.StateDir, keyringFileName), b); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	if m.cfg.ClusterKeyFile != "" && len(kf.Keys) > 0 {
		if err := store.WriteFileAtomic(m.cfg.ClusterKeyFile, kf.Keys[0]); err != nil {
			return fmt.Errorf("mesh: %w", err)
		}
	}
	return nil
}

// keyringOpsLocked returns the recent operations, for push/pull.
func (m *Mesh) keyringOpsLocked() []store.KeyringOp { return slices.Clone(m.kr.ops) }
