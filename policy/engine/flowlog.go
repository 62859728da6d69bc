package engine

import (
	"context"
	"github.com/weft-net/weft/policy"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Flow logs: one log/slog record for every denied packet and every new
// allowed flow, like Cloud Foundry's iptables logging. With a JSON handler:
//
//	{"time":"2026-01-02T15:04:05.123456789Z","level":"INFO","msg":"flow",
//	 "verdict":"no_policy","direction":"inbound","protocol":"tcp",
//	 "source_app":"appA","source":"10.255.2.10:40000",
//	 "destination_app":"appB","destination":"10.255.1.20:8081"}
//
// (one line). direction is as this cell sees the packet: inbound (from a
// peer cell), outbound (from a local container to another cell) or local
// (between two containers of this cell, hair-pinned). An accept judged by a
// rule (inbound or local) names it: "rule":"appA>appB/tcp/8080-8080"
// (Rule.Key); an outbound accept has none, as the destination cell judges
// it. Ports are left out for icmp; an unregistered address has an empty
// app.
//
// The packet path pays one atomic load when the log is off. When it is on,
// a token bucket (Config.FlowLogRate records a second, burst the same)
// decides before anything is looked up; a packet that passes copies a
// fixed-size record into a buffered channel, and a goroutine of the engine
// looks up the apps and the rule and hands the slog.Record to the handler.
// Records over the rate, or that find the channel full, are counted in
// Counters.FlowLogDropped.

// Directions of a flow-log record.
const (
	dirInbound uint8 = iota
	dirOutbound
	dirLocal
)

var dirNames = [...]string{dirInbound: "inbound", dirOutbound: "outbound", dirLocal: "local"}

// flowRecord is one flow log record before formatting.
type flowRecord struct {
	time         time.Time
	t            *Table // the table that judged the packet
	verdict      Verdict
	dir          uint8
	proto        policy.Protocol
	v6           bool
	src, dst     [16]byte
	sport, dport uint16
}

type flowLog struct {
	h    slog.Handler
	ch   chan flowRecord
	stop chan struct{}
	done chan struct{}
}

const flowLogBuffer = 1024

// SetFlowLog switches the flow log on, handing records to h, or off (h ==
// nil). h is called from one goroutine of the engine at a time. When
// SetFlowLog returns, the previous handler has received every record
// accepted for it and will not be called again. Safe for concurrent use.
func (e *Engine) SetFlowLog(h slog.Handler) {
	e.flogMu.Lock()
	defer e.flogMu.Unlock()
	if old := e.flog.Swap(nil); old != nil {
		close(old.stop)
		<-old.done
	}
	if h == nil {
		return
	}
	fl := &flowLog{h: h, ch: make(chan flowRecord, flowLogBuffer), stop: make(chan struct{}), done: make(chan struct{})}
	go fl.run()
	e.flog.Store(fl)
}

// FlowLogEnabled reports whether the flow log is on.
func (e *Engine) FlowLogEnabled() bool { return e.flog.Load() != nil }

func (fl *flowLog) run() {
	defer close(fl.done)
	for {
		select {
		case r := <-fl.ch:
			fl.handle(&r)
		case <-fl.stop:
			for {
				select {
				case r := <-fl.ch:
					fl.handle(&r)
				default:
					return
				}
			}
		}
	}
}

func (fl *flowLog) handle(r *flowRecord) {
	ctx := context.Background()
	if !fl.h.Enabled(ctx, slog.LevelInfo) {
		return
	}
	fl.h.Handle(ctx, r.record()) //nolint:errcheck // a failing log must not stop the engine
}

// logFlow sends a flow log record for packet p with verdict v seen in
// direction dir, if the log is on and the rate allows.
func (e *Engine) logFlow(v Verdict, p *packet, t *Table, dir uint8) {
	fl := e.flog.Load()
	if fl == nil {
		return
	}
	if !gcraAllow(&e.flogTAT, e.clk.now(), e.flogInterval, e.flogBurst) {
		e.flogDropped.Add(1)
		return
	}
	r := flowRecord{time: time.Now(), t: t, verdict: v, dir: dir, proto: p.proto, v6: p.v6,
		src: p.src, dst: p.dst, sport: p.sport, dport: p.dport}
	select {
	case fl.ch <- r:
		e.flogLines.Add(1)
	default:
		e.flogDropped.Add(1)
	}
}

func (r *flowRecord) addr(a *[16]byte, port uint16) string {
	ip := netip.AddrFrom16(*a)
	if !r.v6 {
		ip = ip.Unmap()
	}
	if r.proto.HasPorts() {
		return netip.AddrPortFrom(ip, port).String()
	}
	return ip.String()
}

// appOf is the app of address a in the record's table, "" if none.
func (r *flowRecord) appOf(a *[16]byte) string {
	if ep, ok := r.t.endpoint(a); ok {
		return r.t.app(ep.app)
	}
	return ""
}

// record is the slog record of r: message "flow", the attributes in the
// package comment.
func (r *flowRecord) record() slog.Record {
	rec := slog.NewRecord(r.time, slog.LevelInfo, "flow", 0)
	srcApp, dstApp := r.appOf(&r.src), r.appOf(&r.dst)
	rec.AddAttrs(
		slog.String("verdict", r.verdict.String()),
		slog.String("direction", dirNames[r.dir]),
		slog.String("protocol", r.proto.String()),
		slog.String("source_app", srcApp),
		slog.String("source", r.addr(&r.src, r.sport)),
		slog.String("destination_app", dstApp),
		slog.String("destination", r.addr(&r.dst, r.dport)),
	)
	if r.verdict.Allowed() && r.dir != dirOutbound {
		if rule, ok := r.t.RuleFor(srcApp, dstApp, r.proto, r.dport); ok {
			rec.AddAttrs(slog.String("rule", rule.Key()))
		}
	}
	return rec
}

// gcraAllow is a token bucket as a GCRA over one theoretical arrival time:
// one token every interval ns, at most burst ns ahead. Lock-free.
func gcraAllow(tat *atomic.Int64, now, interval, burst int64) bool {
	for {
		old := tat.Load()
		next := max(old, now) + interval
		if next-now > burst {
			return false
		}
		if tat.CompareAndSwap(old, next) {
			return true
		}
	}
}

// flowLogState is the part of Engine behind the flow log.
type flowLogState struct {
	flog                    atomic.Pointer[flowLog]
	flogMu                  sync.Mutex // serialises SetFlowLog
	flogTAT                 atomic.Int64
	flogInterval, flogBurst int64
	flogLines, flogDropped  atomic.Uint64
}
