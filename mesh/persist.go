package mesh

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/weft-net/weft/mesh/store"
)

// Files in Config.StateDir, written atomically (temp file, fsync, rename)
// with mode 0600: lease.json here, state.json by package store,
// keyring.json (keyring.go), peers.json (peers.go).
const leaseFileName = "lease.json"

// StateFiles are the files the mesh keeps in Config.StateDir (the agent
// checks their owner and mode before it starts); SecretStateFiles are the
// ones among them that hold keys.
var (
	StateFiles       = []string{leaseFileName, store.StateFileName, keyringFileName, peersFileName}
	SecretStateFiles = []string{keyringFileName}
)

// leaseFileData is lease.json: the subnet this cell held last.
type leaseFileData struct {
	Subnet netip.Prefix `json:"subnet,omitzero"`
	Time   int64        `json:"lease_time_unix_ns,omitempty"`
	// Takeover is the lease time of a dead cell's lease this one replaced.
	Takeover int64 `json:"takeover_of_unix_ns,omitempty"`
}

// load reads state.json (store.Load) and lease.json; missing files are
// fine, corrupt ones are an error (fail closed rather than run without the
// policy).
func (m *Mesh) load() error {
	leases, restored, err := m.st.Load(m.cfg.StateDir, m.pool().Valid)
	if err != nil {
		return err
	}
	for _, n := range leases {
		m.recSeen[n] = time.Now() // the hold restarts with this life
	}
	if restored {
		m.kick(m.kickPersist)
	}
	var lf leaseFileData
	ok, err := store.ReadJSON(filepath.Join(m.cfg.StateDir, leaseFileName), &lf)
	if err != nil {
		return err
	}
	if !ok || !lf.Subnet.IsValid() {
		return nil
	}
	if !m.pool().Valid(lf.Subnet) {
		m.log.Warn("persisted lease does not fit the overlay; picking a new one",
			"subnet", lf.Subnet, "overlay", m.cfg.OverlayCIDR, "subnet_bits", m.cfg.SubnetBits)
		return nil
	}
	m.setLeaseLocked(lf.Subnet, lf.Time, lf.Takeover, true)
	return nil
}

// persistState writes state.json from a snapshot taken under persistMu, so
// concurrent writers cannot reorder snapshots.
func (m *Mesh) persistState() error {
	m.persistMu.Lock()
	defer m.persistMu.Unlock()
	m.mu.Lock()
	sf := m.st.Snapshot()
	m.mu.Unlock()
	return store.WriteState(m.cfg.StateDir, sf)
}

func (m *Mesh) persistLease(r store.LeaseRec) error {
	m.persistMu.Lock()
	defer m.persistMu.Unlock()
	b, err := json.Marshal(leaseFileData{Subnet: r.Subnet, Time: r.Time, Takeover: r.Takeover})
	if err != nil {
		return err
	}
	return store.WriteFileAtomic(filepath.Join(m.cfg.StateDir, leaseFileName), b)
}
