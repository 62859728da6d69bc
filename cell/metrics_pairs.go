package cell

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/policy/engine"
)

// deniedPairsTop is how many app pairs get series of their own in
// weft_packets_denied_by_pair_total; the rest are summed under "other".
// The metric has at most deniedPairsTop+1 series per drop verdict,
// whatever the number of apps.
const deniedPairsTop = 20

// Label values for app pairs that are not one app.
const (
	pairOther        = "(other)"        // pairs beyond the top (engine.PairDenials.Other)
	pairUnregistered = "(unregistered)" // an address not in the endpoint registry
)

var descDeniedPairs = prometheus.NewDesc("weft_packets_denied_by_pair_total",
	"Packets the policy engine dropped, by app pair and reason: the top pairs by denials, the rest as source_app=\"(other)\",destination_app=\"(other)\"; \"(unregistered)\": an address not in the registry.",
	[]string{"source_app", "destination_app", "reason"}, nil)

// collectDeniedPairs reports the engine's denials by app pair. The counts
// only grow, the "other" pair's too (engine.Engine.DeniedPairs).
func (c collector) collectDeniedPairs(ch chan<- prometheus.Metric) {
	for _, p := range c.a.engine.DeniedPairs(deniedPairsTop) {
		src, dst := pairLabel(p.Source), pairLabel(p.Destination)
		if p.Other {
			src, dst = pairOther, pairOther
		}
		for v, n := range p.Verdicts {
			if n > 0 {
				ch <- prometheus.MustNewConstMetric(descDeniedPairs, prometheus.CounterValue, float64(n), src, dst, engine.Verdict(v).String())
			}
		}
	}
}

func pairLabel(app string) string {
	if app == "" {
		return pairUnregistered
	}
	return app
}
