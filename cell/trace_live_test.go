package cell

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh"
)

// TestProbeWatch: a cell-to-cell "arm_probe" request makes the engine log
// (it was off), a flow-log record of another flow is ignored, and
// "collect_probe" answers with the verdict of the probe's own packet;
// collecting an unknown watch says so.
func TestProbeWatch(t *testing.T) {
	a, _, subnet := leasedAgent(t)
	ipA, ipB := subnet.Addr().Next().Next(), subnet.Addr().Next().Next().Next()
	for _, e := range []mesh.Endpoint{{IP: ipA, App: "appA", Name: "ca"}, {IP: ipB, App: "appB", Name: "cb"}} {
		if err := a.mesh.AddEndpoint(e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.mesh.AddPolicy(tcpRule("appA", "appB", 8080, 8080)); err != nil {
		t.Fatal(err)
	}
	a.reconcileNow()
	call := func(m cellMsg) probeResult {
		body, _ := json.Marshal(m)
		var res probeResult
		if err := json.Unmarshal(a.serveCellCall(body), &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	match := probeMatch{Protocol: "tcp", Source: ipA.String() + ":40001", Destination: ipB.String() + ":9090"}
	if res := call(cellMsg{Op: "arm_probe", ID: "p1", Match: &match}); res.Error != "" {
		t.Fatalf("arm: %s", res.Error)
	}
	if !a.engine.FlowLogEnabled() {
		t.Fatal("an armed probe watch did not switch the flow log on")
	}
	a.engine.Outbound(synTo(ipA, ipB, 40000, 8080)) // another flow, allowed
	a.engine.Outbound(synTo(ipA, ipB, 40001, 9090)) // the probe: no rule
	res := call(cellMsg{Op: "collect_probe", ID: "p1", WaitMS: 2000})
	if !res.Seen || res.Record.Verdict != "no_policy" || res.Record.Direction != "local" || res.Cell != "c1" {
		t.Errorf("collect: %+v, want no_policy local seen on c1", res)
	}
	// Resent (its answer was lost): the same answer.
	if again := call(cellMsg{Op: "collect_probe", ID: "p1", WaitMS: 10}); again.Record != res.Record {
		t.Errorf("collect again: %+v, want %+v", again, res)
	}
	if res := call(cellMsg{Op: "collect_probe", ID: "nope", WaitMS: 10}); !strings.Contains(res.Error, "no probe watch nope") {
		t.Errorf("unknown watch: %+v", res)
	}
	if res := call(cellMsg{Op: "frob"}); !strings.Contains(res.Error, `unknown request "frob"`) {
		t.Errorf("unknown op: %+v", res)
	}
}

// TestLiveTraceSource: a live trace needs a source container on its own
// cell; the refusal names the cell that has one (409), or says that none
// has (404).
func TestLiveTraceSource(t *testing.T) {
	a := &Agent{cfg: Config{Name: "c1"}}
	eps := []mesh.Endpoint{
		{IP: netip.MustParseAddr("10.255.2.2"), App: "appA", Name: "ca", Cell: "c2"},
		{IP: netip.MustParseAddr("10.255.1.3"), App: "appB", Name: "cb2", Cell: "c1"},
		{IP: netip.MustParseAddr("10.255.1.2"), App: "appB", Name: "cb1", Cell: "c1"},
	}
	cases := []struct {
		req  cellapi.TraceRequest
		code int
		want string
	}{
		{cellapi.TraceRequest{Source: "appA"}, http.StatusConflict, "app appA has no container on cell c1 (its containers run on cell c2)"},
		{cellapi.TraceRequest{FromContainer: "ca"}, http.StatusConflict, "runs on cell c2, not c1"},
		{cellapi.TraceRequest{Source: "appC"}, http.StatusNotFound, "app appC has no container registered on any cell"},
		{cellapi.TraceRequest{FromContainer: "10.255.1.9"}, http.StatusNotFound, `no container "10.255.1.9"`},
		{cellapi.TraceRequest{Source: "appA", FromContainer: "cb1"}, http.StatusBadRequest, "runs app appB, not appA"},
		{cellapi.TraceRequest{Source: "appB"}, 0, "cb1"},
		{cellapi.TraceRequest{FromContainer: "10.255.1.3"}, 0, "cb2"},
	}
	for _, c := range cases {
		e, err := a.liveSource(c.req, eps)
		var se *cellapi.StatusError
		switch {
		case c.code == 0 && (err != nil || e.Name != c.want):
			t.Errorf("%+v: %v, %v; want %s", c.req, e.Name, err, c.want)
		case c.code != 0 && (!errors.As(err, &se) || se.Code != c.code || !strings.Contains(se.Message, c.want)):
			t.Errorf("%+v: %v; want %d %q", c.req, err, c.code, c.want)
		}
	}
}

// TestLiveTraceAPI: the API refuses a live trace whose source runs on no
// cell, and one without a data plane, with the reason.
func TestLiveTraceAPI(t *testing.T) {
	a, c, subnet := leasedAgent(t)
	ipB := subnet.Addr().Next().Next()
	if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: ipB, App: "appB", Name: "cb"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Trace(context.Background(), cellapi.TraceRequest{Live: true, Source: "appA", Destination: "appB", Protocol: "tcp", Port: 8080})
	if err == nil || !strings.Contains(err.Error(), "app appA has no container registered") {
		t.Errorf("unknown source: %v", err)
	}
	_, err = c.Trace(context.Background(), cellapi.TraceRequest{Live: true, Source: "appB", Destination: "appB", Protocol: "tcp", Port: 8080})
	if err == nil || !strings.Contains(err.Error(), "no data plane yet") {
		t.Errorf("no data plane: %v", err)
	}
	_, err = c.Trace(context.Background(), cellapi.TraceRequest{Source: "appB", Destination: "appB", Protocol: "tcp", Port: 8080, SourceIP: "10.0.0.1"})
	if err == nil || !strings.Contains(err.Error(), "source_ip is for a live trace only") {
		t.Errorf("source_ip without live: %v", err)
	}
}
