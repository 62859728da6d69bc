package mesh

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
)

// Views compared on every probe. memberlist spreads a membership change by
// gossip, retransmitted a bounded number of times (RetransmitMult ×
// log10 n), and repairs anything gossip missed only by the periodic
// push/pull (PushPullInterval, 15 s, stretched beyond 32 cells), with one
// random peer at a time. A cell that joined one side of a short partition
// is gossiped to that side only: once the partition heals, the other side
// learns of it only when one of its cells happens to push/pull with a cell
// that knows it, 15 s to a minute later, and until then has no route to
// the new cell's containers.
//
// So each probe's ack carries a digest of the responder's view (the set of
// cells it holds alive, itself included) and how long that view has been
// unchanged. When the prober's and the responder's views differ and both
// have been stable for viewSettle (gossip would have brought a pending
// change by then), gossip will not reconcile them: the prober runs one
// push/pull with the responder at once, as the periodic one would, at most
// one at a time, one per viewSettle, and, while the difference persists
// without this cell's view changing, at doubling intervals up to the
// periodic push/pull's. A partition heals within a probe
// round (n probe intervals) instead of a push/pull lottery; in a converged
// cluster the digests agree and nothing extra is sent.

// viewPayloadLen is the ack payload: version, digest, stable ms, alive.
const viewPayloadLen = 1 + 8 + 4 + 2

// viewSettle is how long both views must have been unchanged before a
// difference is repaired by push/pull rather than left to gossip.
func (m *Mesh) viewSettle() time.Duration { return 2 * m.cfg.ProbeInterval }

// viewDigest returns an order-independent digest of the alive set of
// names: the sum of their FNV-1a hashes.
func viewDigest(names func(yield func(string) bool)) (sum uint64, n int) {
	for name := range names {
		h := fnv.New64a()
		h.Write([]byte(name))
		sum += h.Sum64()
		n++
	}
	return sum, n
}

// noteViewLocked records the alive set's digest; called under m.mu
// whenever a member's state changes.
func (m *Mesh) noteViewLocked() {
	d, n := viewDigest(func(yield func(string) bool) {
		if m.nodes[m.cfg.Name] == nil && !yield(m.cfg.Name) {
			return
		}
		for name, mb := range m.nodes {
			if mb.state == NodeAlive && !yield(name) {
				return
			}
		}
	})
	m.viewMu.Lock()
	defer m.viewMu.Unlock()
	if d != m.view.digest {
		m.view.digest, m.view.alive, m.view.since = d, n, time.Now()
		m.view.spacing = 0
	}
}

// pings is the memberlist.PingDelegate of a Mesh.
type pings Mesh

var _ memberlist.PingDelegate = (*pings)(nil)

// AckPayload: this cell's view, for the prober to compare.
func (p *pings) AckPayload() []byte {
	m := (*Mesh)(p)
	m.viewMu.Lock()
	d, n, since := m.view.digest, m.view.alive, m.view.since
	m.viewMu.Unlock()
	b := make([]byte, viewPayloadLen)
	b[0] = 1
	binary.BigEndian.PutUint64(b[1:], d)
	binary.BigEndian.PutUint32(b[9:], uint32(min(time.Since(since).Milliseconds(), 1<<32-1)))
	binary.BigEndian.PutUint16(b[13:], uint16(min(n, 1<<16-1)))
	return b
}

// NotifyPingComplete compares the responder's view with this cell's and
// starts a push/pull with it when they differ and both have settled. It
// runs on memberlist's probe goroutine: the push/pull does not.
func (p *pings) NotifyPingComplete(other *memberlist.Node, _ time.Duration, payload []byte) {
	m := (*Mesh)(p)
	if len(payload) != viewPayloadLen || payload[0] != 1 || other == nil {
		return // an older cell, or none
	}
	theirs := binary.BigEndian.Uint64(payload[1:])
	theirStable := time.Duration(binary.BigEndian.Uint32(payload[9:])) * time.Millisecond
	theirAlive := int(binary.BigEndian.Uint16(payload[13:]))
	settle := m.viewSettle()
	m.viewMu.Lock()
	ours, ourAlive, since := m.view.digest, m.view.alive, m.view.since
	now := time.Now()
	if theirs == ours || theirStable < settle || now.Sub(since) < settle ||
		m.view.pulling || now.Sub(m.view.lastPull) < max(settle, m.view.spacing) {
		m.viewMu.Unlock()
		return
	}
	m.view.pulling, m.view.lastPull = true, now
	// A difference that a push/pull did not mend (a cell this one
	// cannot reach) is retried ever less often, up to the periodic
	// push/pull's interval; a change of this cell's view starts over.
	m.view.spacing = min(2*max(settle, m.view.spacing), max(settle, m.cfg.PushPullInterval))
	m.viewMu.Unlock()
	// The address from weft's member record: memberlist may rewrite
	// other's fields meanwhile (see probeTargets). Its name never changes.
	m.mu.Lock()
	mb := m.nodes[other.Name]
	var ap netip.AddrPort
	if mb != nil {
		ap = netip.AddrPortFrom(mb.addr, mb.port)
	}
	m.mu.Unlock()
	if !ap.Addr().IsValid() {
		m.viewMu.Lock()
		m.view.pulling = false
		m.viewMu.Unlock()
		return
	}
	m.viewPulls.Add(1)
	addr := ap.String()
	m.log.Info("membership views differ; exchanging full state", "peer", other.Name, "addr", addr,
		"alive_here", ourAlive, "alive_there", theirAlive)
	// Not in wg, like confirmLease: a push/pull may block for
	// memberlist's TCP timeout.
	go func() {
		defer func() {
			m.viewMu.Lock()
			m.view.pulling = false
			m.viewMu.Unlock()
		}()
		if m.mlDown.Load() {
			return
		}
		if _, err := m.ml.Join([]string{addr}); err != nil {
			m.log.Info("the push/pull with a cell of another view failed", "peer", other.Name, "err", oneLine(err))
		}
	}()
}

// aliveFilter is the memberlist.AliveDelegate of Config.ignoreAlive.
type aliveFilter func(node string) bool

func (f aliveFilter) NotifyAlive(n *memberlist.Node) error {
	if f(n.Name) {
		return fmt.Errorf("ignored (test)")
	}
	return nil
}
