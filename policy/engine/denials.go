package engine

import (
	"cmp"
	"slices"
	"sync"
)

// Denials by app pair: every packet the engine drops after parsing it is
// counted under its (source app, destination app, verdict), an address
// outside the registry under the app "". The first maxDeniedPairs pairs
// are counted one by one, later ones together (PairDenials.Other), so a
// flood from many addresses cannot grow the table; DeniedPairs reports the
// top pairs and sums the rest. Counting takes one short lock on the deny
// path only, and allocates only when a pair is counted for the first time.

// maxDeniedPairs bounds the pairs counted one by one.
const maxDeniedPairs = 1024

type appPair struct{ src, dst string }

type deniedPairs struct {
	mu    sync.Mutex
	pairs map[appPair]*[numVerdicts]uint64 // guarded by mu; at most maxDeniedPairs
	over  [numVerdicts]uint64              // guarded by mu: pairs beyond maxDeniedPairs
}

func (d *deniedPairs) add(src, dst string, v Verdict) {
	d.mu.Lock()
	if c := d.pairs[appPair{src, dst}]; c != nil {
		c[v]++
		d.mu.Unlock()
		return
	}
	d.addLocked(src, dst, v)
	d.mu.Unlock()
}

// addLocked counts the first denial of a pair. Needs d.mu.
func (d *deniedPairs) addLocked(src, dst string, v Verdict) {
	if d.pairs == nil {
		d.pairs = make(map[appPair]*[numVerdicts]uint64)
	}
	if len(d.pairs) >= maxDeniedPairs {
		d.over[v]++
		return
	}
	c := new([numVerdicts]uint64)
	c[v]++
	d.pairs[appPair{src, dst}] = c
}

// deny counts a denied packet under its app pair and logs it.
func (e *Engine) deny(v Verdict, p *packet, t *Table, dir uint8) {
	var src, dst string
	if ep, ok := t.endpoint(&p.src); ok {
		src = t.app(ep.app)
	}
	if ep, ok := t.endpoint(&p.dst); ok {
		dst = t.app(ep.app)
	}
	e.pairs.add(src, dst, v)
	e.logFlow(v, p, t, dir)
}

// PairDenials are the packets denied between two apps, by verdict.
type PairDenials struct {
	Source, Destination string // "": an address not in the registry
	// Other: the sum of every pair beyond the top ones (Source and
	// Destination are empty).
	Other    bool
	Verdicts [numVerdicts]uint64 // indexed by Verdict
}

// Total is the sum of the pair's verdicts.
func (p *PairDenials) Total() uint64 {
	var n uint64
	for _, c := range p.Verdicts {
		n += c
	}
	return n
}

// DeniedPairs returns the top pairs by denied packets, largest first, and
// one Other entry with the rest (present once there is any). Every count
// only grows, the Other entry's too: a pair that leaves the top moves its
// count into Other, where the pair that replaced it had a smaller one.
func (e *Engine) DeniedPairs(top int) []PairDenials {
	d := &e.pairs
	d.mu.Lock()
	all := make([]PairDenials, 0, len(d.pairs))
	for k, c := range d.pairs {
		all = append(all, PairDenials{Source: k.src, Destination: k.dst, Verdicts: *c})
	}
	other := PairDenials{Other: true, Verdicts: d.over}
	d.mu.Unlock()
	slices.SortFunc(all, func(a, b PairDenials) int {
		return cmp.Or(cmp.Compare(b.Total(), a.Total()), cmp.Compare(a.Source, b.Source), cmp.Compare(a.Destination, b.Destination))
	})
	if len(all) <= top && other.Total() == 0 {
		return all
	}
	top = min(top, len(all))
	for _, p := range all[top:] {
		for v, n := range p.Verdicts {
			other.Verdicts[v] += n
		}
	}
	return append(all[:top], other)
}
