package cell

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
)

// Egress in the flow log: the kernel decides egress (overlay/egress_linux.go)
// and logs each flow's first packet, refused or accepted, rate-limited, to
// an NFLOG group (overlay/nflog_linux.go). While the flow log is on (stderr
// or a tailer) each record becomes a line like the engine's:
//
//	{"msg":"flow","verdict":"egress","direction":"outbound","protocol":"tcp",
//	 "source_app":"appA","source":"10.255.1.2:40000","destination_app":"",
//	 "destination":"198.18.0.2:8088"}
//
// with verdict egress (refused) or egress_accepted.

// startEgressLog reads the egress records until stop is closed. A cell
// whose kernel has no NFLOG keeps running: egress is still enforced and
// counted, only not in the flow log.
func (a *Agent) startEgressLog(stop <-chan struct{}) {
	if err := overlay.EgressLog(a.egressRecord, stop); err != nil {
		a.log.Warn("egress flows are not flow-logged", "err", err)
	}
}

// egressRecord hands r to the flow log when it is on. It runs on the
// NFLOG reader's goroutine.
func (a *Agent) egressRecord(r overlay.EgressRecord) {
	a.flows.mu.Lock()
	sink := a.flows.sink
	on := a.flows.stderr || a.flows.tailers > 0
	a.flows.mu.Unlock()
	if !on || sink == nil {
		return
	}
	app := ""
	for _, e := range a.mesh.LocalEndpoints() {
		if e.IP == r.Src.Addr() {
			app = e.App
			break
		}
	}
	verdict := overlay.GuardEgress
	if r.Accepted {
		verdict = overlay.GuardEgressAccepted
	}
	addr := func(ap netip.AddrPort) string {
		if r.Protocol == policy.ProtoICMP {
			return ap.Addr().String()
		}
		return ap.String()
	}
	rec := slog.NewRecord(time.Now(), slog.LevelInfo, "flow", 0)
	rec.AddAttrs(
		slog.String("verdict", verdict),
		slog.String("direction", "outbound"),
		slog.String("protocol", r.Protocol.String()),
		slog.String("source_app", app),
		slog.String("source", addr(r.Src)),
		slog.String("destination_app", ""),
		slog.String("destination", addr(r.Dst)),
	)
	sink.Handle(context.Background(), rec) //nolint:errcheck // as the engine's log: a failing line is lost
}
