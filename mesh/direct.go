package mesh

import "math/rand/v2"

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
// Must not be called with mu held (it calls into memberlist).
func (m *Mesh) sendDirect(b *broadcast) {
	if m.mlDown.Load() {
		return
	}
	nodes := m.ml.Members() // alive and suspect members, self included
	rand.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
	sent := 0
	for _, n := range nodes {
		if sent == directFanout {
			break
		}
		if n.Name == m.cfg.Name {
			continue
		}
		if err := m.ml.SendBestEffort(n, b.msg); err != nil {
			m.log.Debug("direct send failed", "to", n.Name, "err", err)
			continue
		}
		sent++
	}
}
