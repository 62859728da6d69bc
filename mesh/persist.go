package mesh

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Files in Config.StateDir, written atomically (temp file, fsync, rename)
// with mode 0600.
const (
	leaseFileName = "lease.json"
	stateFileName = "state.json"
	stateVersion  = 1
)

// StateFiles are the files the mesh keeps in Config.StateDir (the agent
// checks their owner and mode before it starts); SecretStateFiles are the
// ones among them that hold keys.
var (
	StateFiles       = []string{leaseFileName, stateFileName, keyringFileName, peersFileName}
	SecretStateFiles = []string{keyringFileName}
)

// leaseFileData is lease.json: the subnet this cell held last.
type leaseFileData struct {
	Subnet netip.Prefix `json:"subnet,omitzero"`
	Time   int64        `json:"lease_time_unix_ns,omitempty"`
	// Takeover is the lease time of a dead cell's lease this one replaced.
	Takeover int64 `json:"takeover_of_unix_ns,omitempty"`
}

// stateFileData is state.json: what a restarted cell needs before it hears
// from any peer. Remote endpoints are not kept: they are re-learnt at join.
type stateFileData struct {
	Version   int          `json:"version"`
	Node      string       `json:"node"`
	Seq       uint64       `json:"seq"`
	Clock     uint64       `json:"clock"`
	Endpoints []epEntry    `json:"endpoints"` // own, tombstones included
	Policies  []polEntry   `json:"policies"`  // tombstones included
	Routes    []routeEntry `json:"routes"`    // tombstones included
	Leases    []leaseRec   `json:"leases"`
}

// asideSuffix names a copy of state.json kept aside because some of its
// signed changes failed verification: state.json.unverified-TIME.
const asideSuffix = ".unverified-"

// load reads lease.json and state.json; missing files are fine, corrupt
// ones are an error (fail closed rather than run without the policy).
//
// Persisted policy changes and routes that the trusted operator keys do
// not verify are not applied, and not dropped either: state.json is first
// copied aside (asideSuffix), and an error names the copy. Whatever a copy
// kept aside holds that the keys verify now is merged back (restoreAside):
// an operators.pub damaged, then restored, loses nothing.
func (m *Mesh) load() error {
	path := filepath.Join(m.cfg.StateDir, stateFileName)
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("mesh: %w", err)
	}
	if err == nil {
		var sf stateFileData
		if err := json.Unmarshal(raw, &sf); err != nil {
			return fmt.Errorf("mesh: %s: %w", path, err)
		}
		if sf.Version != stateVersion {
			return fmt.Errorf("mesh: %s: unsupported version %d", stateFileName, sf.Version)
		}
		if sf.Node != m.cfg.Name {
			m.log.Warn("state file written by another node name; keeping its policies only",
				"file_node", sf.Node, "node", m.cfg.Name)
		}
		m.st.observeSeq(sf.Seq)
		m.st.observeStamp(sf.Clock)
		now := m.st.now()
		for _, e := range sf.Endpoints {
			if e.Owner != m.cfg.Name || e.wellFormed() != nil {
				continue
			}
			if e.Deleted {
				e.deletedAt = now
			}
			m.st.eps[epKey{e.Owner, e.IP}] = e
		}
		unverified := make(map[string]int) // signer fingerprint -> changes
		for _, p := range sf.Policies {
			if err := p.Rule.validate(netip.Prefix{}); err != nil {
				return fmt.Errorf("mesh: %s: policy %s>%s: %w", stateFileName, p.Rule.Src, p.Rule.Dst, err)
			}
			// The trusted keys may have changed since the file was
			// written: apply only what they still vouch for.
			if p.wellFormed() != nil || m.verifyPolicy(p) != nil {
				unverified[Fingerprint(p.Signer)]++
				continue
			}
			m.st.putPolicy(p.Rule.key(), p)
		}
		var res mergeResult
		for _, e := range sf.Routes {
			if e.wellFormed() != nil || m.verifySig(e.Signer, e.Sig, routeSignedBytes(e)) != nil {
				unverified[Fingerprint(e.Signer)]++
				continue
			}
			m.mergeRouteLocked(e, false, &res)
		}
		if len(unverified) > 0 {
			if err := m.keepAside(raw, unverified); err != nil {
				return err
			}
		}
		for _, r := range sf.Leases {
			if m.validSubnet(r.Subnet) && r.Node != "" {
				m.st.leases[r.Node] = r
				m.recSeen[r.Node] = time.Now() // the hold restarts with this life
			}
		}
	}
	m.restoreAside()
	var lf leaseFileData
	ok, err := readJSON(filepath.Join(m.cfg.StateDir, leaseFileName), &lf)
	if err != nil {
		return err
	}
	if !ok || !lf.Subnet.IsValid() {
		return nil
	}
	if !m.validSubnet(lf.Subnet) {
		m.log.Warn("persisted lease does not fit the overlay; picking a new one",
			"subnet", lf.Subnet, "overlay", m.cfg.OverlayCIDR, "subnet_bits", m.cfg.SubnetBits)
		return nil
	}
	m.setLeaseLocked(lf.Subnet, lf.Time, lf.Takeover, true)
	return nil
}

// keepAside copies raw, the state.json just read, to a file next to it
// before anything rewrites it, and says so: unverified counts its changes
// that no trusted key verifies, by signer.
func (m *Mesh) keepAside(raw []byte, unverified map[string]int) error {
	aside := filepath.Join(m.cfg.StateDir, stateFileName+asideSuffix+time.Now().UTC().Format("20060102T150405.000000000Z"))
	n := 0
	signers := make([]string, 0, len(unverified))
	for k, c := range unverified {
		n += c
		signers = append(signers, k)
	}
	slices.Sort(signers)
	if err := writeFileAtomic(aside, raw); err != nil {
		return fmt.Errorf("mesh: %s holds %d signed changes that no trusted operator key verifies, and keeping it aside failed: %w",
			stateFileName, n, err)
	}
	m.log.Error("persisted signed changes that no trusted operator key verifies are not applied; "+
		"state.json is kept aside: check operators.pub (they come back at the next start once a trusted key verifies them)",
		"kept_aside", aside, "unverified", n, "signers", signers)
	return nil
}

// restoreAside merges the policy changes and routes of the copies kept
// aside (keepAside) that the trusted keys verify now.
func (m *Mesh) restoreAside() {
	files, _ := filepath.Glob(filepath.Join(m.cfg.StateDir, stateFileName+asideSuffix+"*"))
	for _, f := range files {
		var sf stateFileData
		if _, err := readJSON(f, &sf); err != nil {
			m.log.Warn("unreadable copy of state.json kept aside", "err", err)
			continue
		}
		var res mergeResult
		verified, left := 0, 0
		for _, p := range sf.Policies {
			if p.wellFormed() != nil || m.verifyPolicy(p) != nil {
				left++
				continue
			}
			verified++
			m.mergePolicyLocked(p, false, &res)
		}
		for _, e := range sf.Routes {
			if e.wellFormed() != nil || m.verifySig(e.Signer, e.Sig, routeSignedBytes(e)) != nil {
				left++
				continue
			}
			verified++
			m.mergeRouteLocked(e, false, &res)
		}
		if res.stored {
			m.kick(m.kickPersist)
		}
		if verified > 0 {
			m.log.Info("signed changes kept aside are verified now: merged", "file", f, "verified", verified, "news", res.stored)
		}
		if left > 0 {
			m.log.Warn("signed changes kept aside are still not verified by a trusted operator key; "+
				"delete the file once their keys are retired", "file", f, "unverified", left)
		}
	}
}

func readJSON(path string, v any) (bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("mesh: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("mesh: %s: %w", path, err)
	}
	return true, nil
}

// persistState writes state.json from a snapshot taken under persistMu, so
// concurrent writers cannot reorder snapshots.
func (m *Mesh) persistState() error {
	m.persistMu.Lock()
	defer m.persistMu.Unlock()
	m.mu.Lock()
	sf := stateFileData{
		Version:   stateVersion,
		Node:      m.cfg.Name,
		Seq:       m.st.seq,
		Clock:     m.st.clock,
		Endpoints: []epEntry{},
		Policies:  make([]polEntry, 0, len(m.st.pols)),
		Leases:    make([]leaseRec, 0, len(m.st.leases)),
	}
	for k, e := range m.st.eps {
		if k.owner == m.cfg.Name {
			sf.Endpoints = append(sf.Endpoints, e)
		}
	}
	for _, p := range m.st.pols {
		sf.Policies = append(sf.Policies, p)
	}
	for _, e := range m.st.routes {
		sf.Routes = append(sf.Routes, e)
	}
	for _, r := range m.st.leases {
		sf.Leases = append(sf.Leases, r)
	}
	m.mu.Unlock()
	b, err := json.Marshal(sf)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(m.cfg.StateDir, stateFileName), b)
}

func (m *Mesh) persistLease(r leaseRec) error {
	m.persistMu.Lock()
	defer m.persistMu.Unlock()
	b, err := json.Marshal(leaseFileData{Subnet: r.Subnet, Time: r.Time, Takeover: r.Takeover})
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(m.cfg.StateDir, leaseFileName), b)
}

// writeFileAtomic replaces path with data: a 0600 temp file in the same
// directory, fsynced, renamed over path, directory fsynced.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		_ = f.Close()
		return err
	}
	if _, err = f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
