package mesh

import (
	"math/rand/v2"
	"net/netip"

	"github.com/hashicorp/memberlist"
)

// directFanout is how many random live members a change made by this cell
// is sent to at once, besides being queued for gossip (memberlist's
// GossipNodes is 3 too).
const directFanout = 3

// sendDirect sends b at once, as memberlist user messages (UDP, encrypted
// like gossip, best effort), to directFanout random live members; they
// merge it and relay it through their own gossip queues. The gossip queue
// still carries it as well; duplicates are dropped by sequence.
//
// Why: memberlist fills every gossip packet with its own messages first and
// gives the delegate's broadcasts only the space left. A cell that has just
// joined has an alive message queued for every member its join push/pull
// taught it (memberlist re-broadcasts them), so its own first changes (the
// lease broadcast, the endpoints of its first containers) waited behind
// them: about a second at 50 cells (bench: join-gossip-ms).
//
// The addresses come from the Mesh's own member records, which the event
// delegate copies under memberlist's lock: the *Node pointers of
// memberlist's Members() are its live records, which its packet handler
// rewrites (Addr, Port) while a sender reads them (a data race the race
// detector caught in TestSimultaneousJoinsGetDistinctSubnets).
//
// Must not be called with mu held (it calls into memberlist).
func (m *Mesh) sendDirect(b *broadcast) {
	if m.mlDown.Load() {
		return
	}
	var to []memberlist.Address
	m.mu.Lock()
	for name, mb := range m.nodes {
		if name != m.cfg.Name && mb.state == NodeAlive && mb.addr.IsValid() {
			to = append(to, memberlist.Address{Addr: netip.AddrPortFrom(mb.addr, mb.port).String(), Name: name})
		}
	}
	m.mu.Unlock()
	rand.Shuffle(len(to), func(i, j int) { to[i], to[j] = to[j], to[i] })
	sent := 0
	for _, a := range to {
		if sent == directFanout {
			break
		}
		if err := m.ml.SendToAddress(a, b.msg); err != nil {
			m.log.Debug("direct send failed", "to", a.Name, "err", err)
			continue
		}
		sent++
	}
}
