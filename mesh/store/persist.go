package store

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

// StateFileName is the store's file in the cell's state directory,
// written atomically (temp file, fsync, rename) with mode 0600.
const (
	StateFileName = "state.json"
	stateVersion  = 1
)

// StateFile is state.json: what a restarted cell needs before it hears
// from any peer. Remote endpoints are not kept: they are re-learnt at join.
type StateFile struct {
	Version   int           `json:"version"`
	Node      string        `json:"node"`
	Seq       uint64        `json:"seq"`
	Clock     uint64        `json:"clock"`
	Endpoints []EndpointRec `json:"endpoints"` // own, tombstones included
	Policies  []PolicyReg   `json:"policies"`  // tombstones included
	Routes    []RouteReg    `json:"routes"`    // tombstones included
	Leases    []LeaseRec    `json:"leases"`
}

// asideSuffix names a copy of state.json kept aside because some of its
// signed changes failed verification: state.json.unverified-TIME.
const asideSuffix = ".unverified-"

// Load reads dir's state.json into the store; a missing file is fine, a
// corrupt one is an error (fail closed rather than run without the
// policy). Lease records whose subnet validSubnet refuses are left out;
// leases names the nodes whose records were loaded. restored says that a
// copy kept aside brought news (see below): state.json is stale.
//
// Persisted policy changes and routes that the trusted operator keys do
// not verify are not applied, and not dropped either: state.json is first
// copied aside (asideSuffix), and an error names the copy. Whatever a copy
// kept aside holds that the keys verify now is merged back (restoreAside):
// an operators.pub damaged, then restored, loses nothing.
func (s *Store) Load(dir string, validSubnet func(netip.Prefix) bool) (leases []string, restored bool, err error) {
	path := filepath.Join(dir, StateFileName)
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("mesh: %w", err)
	}
	if err == nil {
		var sf StateFile
		if err := json.Unmarshal(raw, &sf); err != nil {
			return nil, false, fmt.Errorf("mesh: %s: %w", path, err)
		}
		if sf.Version != stateVersion {
			return nil, false, fmt.Errorf("mesh: %s: unsupported version %d", StateFileName, sf.Version)
		}
		if sf.Node != s.self {
			s.log.Warn("state file written by another node name; keeping its policies only",
				"file_node", sf.Node, "node", s.self)
		}
		s.ObserveSeq(sf.Seq)
		s.ObserveStamp(sf.Clock)
		now := s.now()
		for _, e := range sf.Endpoints {
			if e.Owner != s.self || e.WellFormed() != nil {
				continue
			}
			if e.Deleted {
				e.deletedAt = now
			}
			s.eps[epKey{e.Owner, e.IP}] = e
		}
		unverified := make(map[string]int) // signer fingerprint -> changes
		for _, p := range sf.Policies {
			if err := p.Rule.Validate(netip.Prefix{}); err != nil {
				return nil, false, fmt.Errorf("mesh: %s: policy %s>%s: %w", StateFileName, p.Rule.Src, p.Rule.Dst, err)
			}
			// The trusted keys may have changed since the file was
			// written: apply only what they still vouch for.
			if p.WellFormed() != nil || s.verifyPolicy(p) != nil {
				unverified[Fingerprint(p.Signer)]++
				continue
			}
			s.putPolicy(p.Rule.Key(), p)
		}
		var res Result
		for _, e := range sf.Routes {
			if e.WellFormed() != nil || s.VerifyRoute(e) != nil {
				unverified[Fingerprint(e.Signer)]++
				continue
			}
			s.MergeRoute(e, false, &res)
		}
		if len(unverified) > 0 {
			if err := s.keepAside(dir, raw, unverified); err != nil {
				return nil, false, err
			}
		}
		for _, r := range sf.Leases {
			if validSubnet(r.Subnet) && r.Node != "" {
				s.leases[r.Node] = r
				leases = append(leases, r.Node)
			}
		}
	}
	return leases, s.restoreAside(dir), nil
}

// keepAside copies raw, the state.json just read, to a file next to it
// before anything rewrites it, and says so: unverified counts its changes
// that no trusted key verifies, by signer.
func (s *Store) keepAside(dir string, raw []byte, unverified map[string]int) error {
	aside := filepath.Join(dir, StateFileName+asideSuffix+time.Now().UTC().Format("20060102T150405.000000000Z"))
	n := 0
	signers := make([]string, 0, len(unverified))
	for k, c := range unverified {
		n += c
		signers = append(signers, k)
	}
	slices.Sort(signers)
	if err := WriteFileAtomic(aside, raw); err != nil {
		return fmt.Errorf("mesh: %s holds %d signed changes that no trusted operator key verifies, and keeping it aside failed: %w",
			StateFileName, n, err)
	}
	s.log.Error("persisted signed changes that no trusted operator key verifies are not applied; "+
		"state.json is kept aside: check operators.pub (they come back at the next start once a trusted key verifies them)",
		"kept_aside", aside, "unverified", n, "signers", signers)
	return nil
}

// restoreAside merges the policy changes and routes of the copies kept
// aside (keepAside) that the trusted keys verify now, and reports whether
// that was news.
func (s *Store) restoreAside(dir string) (stored bool) {
	files, _ := filepath.Glob(filepath.Join(dir, StateFileName+asideSuffix+"*"))
	for _, f := range files {
		var sf StateFile
		if _, err := ReadJSON(f, &sf); err != nil {
			s.log.Warn("unreadable copy of state.json kept aside", "err", err)
			continue
		}
		var res Result
		verified, left := 0, 0
		for _, p := range sf.Policies {
			if p.WellFormed() != nil || s.verifyPolicy(p) != nil {
				left++
				continue
			}
			verified++
			s.MergePolicy(p, false, &res)
		}
		for _, e := range sf.Routes {
			if e.WellFormed() != nil || s.VerifyRoute(e) != nil {
				left++
				continue
			}
			verified++
			s.MergeRoute(e, false, &res)
		}
		stored = stored || res.Stored
		if verified > 0 {
			s.log.Info("signed changes kept aside are verified now: merged", "file", f, "verified", verified, "news", res.Stored)
		}
		if left > 0 {
			s.log.Warn("signed changes kept aside are still not verified by a trusted operator key; "+
				"delete the file once their keys are retired", "file", f, "unverified", left)
		}
	}
	return stored
}

// ReadJSON reads the JSON file path into v; it reports false when there
// is no such file.
func ReadJSON(path string, v any) (bool, error) {
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

// Snapshot returns what state.json holds; WriteState writes it. Taken
// under the owner's mutex, written outside it.
func (s *Store) Snapshot() StateFile {
	sf := StateFile{
		Version:   stateVersion,
		Node:      s.self,
		Seq:       s.seq,
		Clock:     s.clock,
		Endpoints: []EndpointRec{},
		Policies:  make([]PolicyReg, 0, len(s.pols)),
		Leases:    make([]LeaseRec, 0, len(s.leases)),
	}
	for k, e := range s.eps {
		if k.owner == s.self {
			sf.Endpoints = append(sf.Endpoints, e)
		}
	}
	for _, p := range s.pols {
		sf.Policies = append(sf.Policies, p)
	}
	for _, e := range s.routes {
		sf.Routes = append(sf.Routes, e)
	}
	for _, r := range s.leases {
		sf.Leases = append(sf.Leases, r)
	}
	return sf
}

// WriteState writes sf as dir's state.json. Callers serialise their
// writes (Mesh.persistMu), so that snapshots are not reordered.
func WriteState(dir string, sf StateFile) error {
	b, err := json.Marshal(sf)
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, StateFileName), b)
}

// WriteFileAtomic replaces path with data: a 0600 temp file in the same
// directory, fsynced, renamed over path, directory fsynced.
func WriteFileAtomic(path string, data []byte) (err error) {
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
