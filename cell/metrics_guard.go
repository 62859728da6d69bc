package cell

import (
	"maps"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/overlay"
)

// guardAppsTop is how many apps get series of their own in
// weft_guard_drops_by_app_total: the first ones with a guard drop on this
// cell, kept for the agent's life; later apps are summed under "(other)".
// So the metric has at most guardAppsTop+2 series per reason, and every
// series only grows.
const guardAppsTop = 20

var descGuardDrops = prometheus.NewDesc("weft_guard_drops_by_app_total",
	"Packets the guard (nftables table inet weft) dropped or refused, by the app of the container's veth "+
		"(the sender for spoofed, to_cell, not_ipv4 and egress; the receiver for ingress) and reason: "+
		"the first 20 apps with a drop on this cell by name, later ones as app=\"(other)\"; "+
		"\"(unregistered)\": a veth of no registered container.",
	[]string{"app", "reason"}, nil)

// guardDrops turns the guard's per-veth drop elements (which expire after
// an idle hour and restart when the table is rebuilt) into per-app counts
// that only grow. Safe for concurrent use.
type guardDrops struct {
	mu      sync.Mutex
	last    map[vethReason]seenDrops // guarded by mu: the elements at the last read
	named   map[string]bool          // guarded by mu: apps with series of their own
	retired map[appReason]uint64     // guarded by mu: counts of elements gone since, by label
}

type vethReason struct{ veth, reason string }

type seenDrops struct {
	app string
	n   uint64
}

type appReason struct{ app, reason string }

// update takes a read of the guard's elements; appOf names the app of a
// local container's veth ("" if none). It returns the counts by label.
func (g *guardDrops) update(read []overlay.VethDrops, appOf func(veth string) string) map[appReason]uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.named == nil {
		g.named, g.retired = map[string]bool{}, map[appReason]uint64{}
	}
	cur := make(map[vethReason]seenDrops, len(read))
	for _, e := range read {
		k := vethReason{e.Veth, e.Reason}
		app := appOf(e.Veth)
		if prev, ok := g.last[k]; ok && e.Packets >= prev.n {
			app = prev.app // the same element: its drops stay its app's (the container may have gone)
		} else if app == "" {
			app = pairUnregistered
		}
		cur[k] = seenDrops{app, e.Packets}
	}
	for k, prev := range g.last {
		if c, ok := cur[k]; !ok || c.n < prev.n {
			g.retired[appReason{g.labelLocked(prev.app), k.reason}] += prev.n // expired or restarted
		}
	}
	g.last = cur
	out := maps.Clone(g.retired)
	for k, c := range cur {
		out[appReason{g.labelLocked(c.app), k.reason}] += c.n
	}
	return out
}

// labelLocked is the label value of app. Needs g.mu.
func (g *guardDrops) labelLocked(app string) string {
	switch {
	case g.named[app]:
		return app
	case len(g.named) < guardAppsTop:
		g.named[app] = true
		return app
	}
	return pairOther
}

// collectGuardDrops reports the guard's drops by app.
func (c collector) collectGuardDrops(ch chan<- prometheus.Metric) bool {
	a := c.a
	ov := a.overlay()
	if ov == nil {
		return true
	}
	read, err := ov.GuardDropsByVeth()
	if err != nil {
		a.log.Debug("metrics: read the guard's drops by veth", "err", err)
		return false
	}
	apps := map[string]string{}
	for _, e := range a.mesh.LocalEndpoints() {
		apps[attach.HostVethName(e.Name)] = e.App
	}
	for k, n := range a.gdrops.update(read, func(veth string) string { return apps[veth] }) {
		ch <- prometheus.MustNewConstMetric(descGuardDrops, prometheus.CounterValue, float64(n), k.app, k.reason)
	}
	return true
}
