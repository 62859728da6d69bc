package mesh

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/weft-net/weft/mesh/store"
)

// peersFileName holds the gossip addresses of the last known live members,
// so that a restarted cell can rejoin through any of them when its --join
// seeds are down.
const peersFileName = "peers.json"

// peersMax bounds peers.json: the first peersMax live members by name.
const peersMax = 32

type peersFileData struct {
	Version int      `json:"version"`
	Addrs   []string `json:"addrs"`
}

// loadPeers reads peers.json. A bad file is logged, naming it, and
// ignored: it only adds join addresses, and the next membership change
// rewrites it.
func (m *Mesh) loadPeers() {
	path := filepath.Join(m.cfg.StateDir, peersFileName)
	var pf peersFileData
	ok, err := store.ReadJSON(path, &pf)
	if err == nil && ok && pf.Version != 1 {
		err = fmt.Errorf("%s: unsupported version %d", path, pf.Version)
	}
	if err != nil {
		m.log.Warn("ignoring the known peers file", "file", path, "err", oneLine(err))
		return
	}
	for _, a := range pf.Addrs {
		if _, err := netip.ParseAddrPort(a); err != nil {
			m.log.Warn("ignoring a bad address in the known peers file", "file", path, "addr", a, "err", oneLine(err))
			continue
		}
		if len(m.peers) < peersMax && !slices.Contains(m.peers, a) {
			m.peers = append(m.peers, a)
		}
	}
	m.peersSaved = strings.Join(m.peers, ",")
}

// joinAddrs returns the seeds, then the known peers of peers.json.
func (m *Mesh) joinAddrs() []string {
	out := slices.Clone(m.cfg.Join)
	for _, p := range m.peers {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// savePeers writes peers.json when the live members' addresses changed. A
// cell alone keeps the file it has: those are the cells to try next time.
func (m *Mesh) savePeers() {
	m.mu.Lock()
	var names []string
	for name, mb := range m.nodes {
		if name != m.cfg.Name && mb.state == NodeAlive && mb.addr.IsValid() {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	names = names[:min(len(names), peersMax)]
	addrs := make([]string, len(names))
	for i, name := range names {
		mb := m.nodes[name]
		addrs[i] = netip.AddrPortFrom(mb.addr, mb.port).String()
	}
	saved := m.peersSaved
	m.mu.Unlock()
	key := strings.Join(addrs, ",")
	if len(addrs) == 0 || key == saved {
		return
	}
	b, err := json.Marshal(peersFileData{Version: 1, Addrs: addrs})
	if err == nil {
		err = store.WriteFileAtomic(filepath.Join(m.cfg.StateDir, peersFileName), b)
	}
	if err != nil {
		m.log.Error("writing the known peers file failed", "err", err)
		return
	}
	m.mu.Lock()
	m.peersSaved = key
	m.mu.Unlock()
}
