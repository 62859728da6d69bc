package policy

import (
	"io"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Flow logs: one JSON line for every denied packet and every new allowed
// flow, like Cloud Foundry's iptables logging, e.g.
//
//	{"time":"2026-01-02T15:04:05.123456789Z","verdict":"no_policy","protocol":"tcp",
//	 "source_app":"appA","source":"10.255.2.10:40000",
//	 "destination_app":"appB","destination":"10.255.1.20:8081"}
//
// (one line). Ports are left out for icmp; an unregistered address has an
// empty app. The packet path pays one atomic load when the log is off. When
// it is on, a token bucket (Config.FlowLogRate lines a second, burst the
// same) decides before anything is looked up or formatted; a packet that
// passes copies a fixed-size record into a buffered channel, and a
// goroutine of the engine formats and writes it. Lines over the rate, or
// that find the channel full, are counted in Counters.FlowLogDropped.

// flowRecord is one flow log line before formatting.
type flowRecord struct {
	time           time.Time
	verdict        Verdict
	proto          Protocol
	v6             bool
	src, dst       [16]byte
	sport, dport   uint16
	srcApp, dstApp string
}

type flowLog struct {
	w    io.Writer
	ch   chan flowRecord
	stop chan struct{}
	done chan struct{}
}

const flowLogBuffer = 1024

// SetFlowLog switches the flow log on, writing to w, or off (w == nil).
// Each line is written with one w.Write call from a goroutine of the
// engine; w need not be safe for concurrent use. When SetFlowLog returns,
// the previous writer has received every line accepted for it and will not
// be written again. Safe for concurrent use.
func (e *Engine) SetFlowLog(w io.Writer) {
	e.flogMu.Lock()
	defer e.flogMu.Unlock()
	if old := e.flog.Swap(nil); old != nil {
		close(old.stop)
		<-old.done
	}
	if w == nil {
		return
	}
	fl := &flowLog{w: w, ch: make(chan flowRecord, flowLogBuffer), stop: make(chan struct{}), done: make(chan struct{})}
	go fl.run()
	e.flog.Store(fl)
}

// FlowLogEnabled reports whether the flow log is on.
func (e *Engine) FlowLogEnabled() bool { return e.flog.Load() != nil }

func (fl *flowLog) run() {
	defer close(fl.done)
	buf := make([]byte, 0, 512)
	for {
		select {
		case r := <-fl.ch:
			buf = r.appendJSON(buf[:0])
			fl.w.Write(buf) //nolint:errcheck // a failing log must not stop the engine
		case <-fl.stop:
			for {
				select {
				case r := <-fl.ch:
					buf = r.appendJSON(buf[:0])
					fl.w.Write(buf) //nolint:errcheck
				default:
					return
				}
			}
		}
	}
}

// logFlow sends a flow log line for packet p with verdict v, if the log is
// on and the rate allows.
func (e *Engine) logFlow(v Verdict, p *packet, t *Table) {
	fl := e.flog.Load()
	if fl == nil {
		return
	}
	if !gcraAllow(&e.flogTAT, e.clk.now(), e.flogInterval, e.flogBurst) {
		e.flogDropped.Add(1)
		return
	}
	r := flowRecord{time: time.Now(), verdict: v, proto: p.proto, v6: p.v6,
		src: p.src, dst: p.dst, sport: p.sport, dport: p.dport}
	if ep, ok := t.endpoint(&p.src); ok {
		r.srcApp = t.app(ep.app)
	}
	if ep, ok := t.endpoint(&p.dst); ok {
		r.dstApp = t.app(ep.app)
	}
	select {
	case fl.ch <- r:
		e.flogLines.Add(1)
	default:
		e.flogDropped.Add(1)
	}
}

func (r *flowRecord) addr(a *[16]byte, port uint16, b []byte) []byte {
	ip := netip.AddrFrom16(*a)
	if !r.v6 {
		ip = ip.Unmap()
	}
	b = append(b, '"')
	if r.v6 && r.proto.hasPorts() {
		b = append(b, '[')
	}
	b = ip.AppendTo(b)
	if r.proto.hasPorts() {
		if r.v6 {
			b = append(b, ']')
		}
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(port), 10)
	}
	return append(b, '"')
}

// appendJSON appends the record as one JSON line.
func (r *flowRecord) appendJSON(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = r.time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","verdict":"`...)
	b = append(b, r.verdict.String()...)
	b = append(b, `","protocol":"`...)
	b = append(b, r.proto.String()...)
	b = append(b, `","source_app":`...)
	b = strconv.AppendQuote(b, r.srcApp)
	b = append(b, `,"source":`...)
	b = r.addr(&r.src, r.sport, b)
	b = append(b, `,"destination_app":`...)
	b = strconv.AppendQuote(b, r.dstApp)
	b = append(b, `,"destination":`...)
	b = r.addr(&r.dst, r.dport, b)
	return append(b, "}\n"...)
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
