package cell

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weft-net/weft/internal/buildinfo"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
)

// Prometheus metrics (`weft agent --metrics-addr IP:PORT`, off by default).
// Everything is read at scrape time from counters the data path keeps
// anyway (engine.Engine.Counters, wgctrl, the mesh): the hot path makes no
// metric calls.
//
//	weft_packets_allowed_total{verdict}      packets passed: accept (inbound/outbound), accept_local (hair-pin)
//	weft_packets_denied_total{reason}        packets dropped, by verdict (no_policy, revoked, spoofed, ...)
//	                                         and by the kernel guard (spoofed, to_cell, not_ipv4)
//	weft_packets_denied_by_pair_total{source_app,destination_app,reason}
//	                                         the engine's denials of the top 20 app pairs, the rest as
//	                                         source_app="(other)",destination_app="(other)" (metrics_pairs.go)
//	weft_rejects_sent_total                  TCP RST / ICMP unreachable built for denied packets
//	weft_rejects_limited_total               rejects suppressed by the per-source rate limit
//	weft_conntrack_entries                   tracked flows
//	weft_conntrack_evictions_total           live flows evicted from a full conntrack
//	weft_members{state}                      cells by state: alive, suspect, dead, left (self included)
//	weft_peers                               WireGuard peers
//	weft_packets_dropped_no_session_total    packets for a peer without a WireGuard session that held its share of buffers
//	weft_peer_receive_bytes_total{peer,public_key}   bytes from a peer (wgctrl)
//	weft_peer_transmit_bytes_total{peer,public_key}  bytes to a peer
//	weft_peer_last_handshake_seconds{peer,public_key} seconds since the last handshake (absent: never)
//	weft_peer_path_mtu{peer,public_key}      largest inner packet the path to a peer carries, as probed (absent: unknown)
//	weft_policies                            rules in the policy set
//	weft_policy_version                      48 bits of a SHA-256 of the sorted policy set: equal on cells that agree
//	weft_policy_enforced                     1 while the data path applies the policy, 0 while it passes every packet
//	weft_lease{subnet}                       1 while the cell holds the subnet lease
//	weft_containers                          containers on this cell
//	weft_build_info{version,goversion}       1, labelled with this agent's version and Go toolchain
//	weft_drift_repaired_total{kind}          state of the data plane that something else changed and the agent put back:
//	                                         peer, link, address, route, rule, nftables (overlay/drift_linux.go)
//	weft_subnet_conflict{subnet,holder}      while another cell holds an older lease of this cell's subnet:
//	                                         this cell's containers there (unreachable; new ones refused)
//
// plus the Go runtime and process collectors (go_*, process_*).

var (
	descAllowed = prometheus.NewDesc("weft_packets_allowed_total",
		"Packets the policy engine let pass, by verdict.", []string{"verdict"}, nil)
	descDenied = prometheus.NewDesc("weft_packets_denied_total",
		"Packets the policy engine dropped, by reason.", []string{"reason"}, nil)
	descRejectsSent = prometheus.NewDesc("weft_rejects_sent_total",
		"TCP RST / ICMP port-unreachable packets built to answer denied packets.", nil, nil)
	descRejectsLimited = prometheus.NewDesc("weft_rejects_limited_total",
		"Rejects suppressed by the per-source rate limit.", nil, nil)
	descFlows = prometheus.NewDesc("weft_conntrack_entries",
		"Flows tracked by the policy engine.", nil, nil)
	descEvictions = prometheus.NewDesc("weft_conntrack_evictions_total",
		"Live flows evicted from a full conntrack table.", nil, nil)
	descMembers = prometheus.NewDesc("weft_members",
		"Cells known to the gossip layer, by state (self included).", []string{"state"}, nil)
	descNoSession = prometheus.NewDesc("weft_packets_dropped_no_session_total",
		"Packets for a WireGuard peer without a session that already held its share of the message buffers (overlay/gate.go).", nil, nil)
	descPeers = prometheus.NewDesc("weft_peers",
		"WireGuard peers configured on the device.", nil, nil)
	descPeerRx = prometheus.NewDesc("weft_peer_receive_bytes_total",
		"Bytes received from a WireGuard peer.", []string{"peer", "public_key"}, nil)
	descPeerTx = prometheus.NewDesc("weft_peer_transmit_bytes_total",
		"Bytes sent to a WireGuard peer.", []string{"peer", "public_key"}, nil)
	descPeerPathMTU = prometheus.NewDesc("weft_peer_path_mtu",
		"Largest inner packet the path to a peer carries, as probed through the tunnel (absent while unknown).", []string{"peer", "public_key"}, nil)
	descPeerHandshake = prometheus.NewDesc("weft_peer_last_handshake_seconds",
		"Seconds since the last WireGuard handshake with a peer (absent until the first).", []string{"peer", "public_key"}, nil)
	descPolicies = prometheus.NewDesc("weft_policies",
		"Rules in the replicated policy set.", nil, nil)
	descPolicyVersion = prometheus.NewDesc("weft_policy_version",
		"48 bits of a SHA-256 over the sorted policy set; cells with the same value enforce the same rules.", nil, nil)
	descEnforced = prometheus.NewDesc("weft_policy_enforced",
		"1 while the data path applies the policy; 0 while it passes every packet (--policy=off, or switched off at run time).", nil, nil)
	descLease = prometheus.NewDesc("weft_lease",
		"1 while this cell holds the subnet lease in the label.", []string{"subnet"}, nil)
	descContainers = prometheus.NewDesc("weft_containers",
		"Containers on this cell.", nil, nil)
	descBuildInfo = prometheus.NewDesc("weft_build_info",
		"1, labelled with the version of this agent and the Go toolchain that built it.", []string{"version", "goversion"}, nil)
	descConflict = prometheus.NewDesc("weft_subnet_conflict",
		"Present while another cell (holder) holds an older lease of this cell's subnet: this cell's containers in it, which are not reachable.",
		[]string{"subnet", "holder"}, nil)
	descDriftRepaired = prometheus.NewDesc("weft_drift_repaired_total",
		"Data-plane state that something else changed (a WireGuard peer, a link, an address, a route, a rule, the nftables table) and the agent put back, by kind.",
		[]string{"kind"}, nil)
	descScrapeErrors = prometheus.NewDesc("weft_scrape_errors_total",
		"Parts of this scrape that could not be read (e.g. the WireGuard device before the lease).", []string{"part"}, nil)
)

// collector reads an agent's state at scrape time. Collect may run
// concurrently with everything else; it only calls the agent's thread-safe
// getters.
type collector struct{ a *Agent }

var _ prometheus.Collector = collector{}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAllowed, descDenied, descRejectsSent, descRejectsLimited,
		descFlows, descEvictions, descMembers, descPeers, descNoSession, descPeerRx, descPeerTx, descPeerHandshake, descPeerPathMTU,
		descPolicies, descPolicyVersion, descEnforced, descLease, descContainers, descBuildInfo, descConflict, descDriftRepaired, descScrapeErrors} {
		ch <- d
	}
	ch <- descDeniedPairs // metrics_pairs.go
	ch <- descGuardDrops  // metrics_guard.go
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	cnt := a.engine.Counters()
	for v, n := range cnt.All() {
		if v.Allowed() {
			counter(descAllowed, n, v.String())
		}
	}
	eg, in := a.egressAccepted()
	counter(descAllowed, eg, overlay.GuardEgressAccepted)
	counter(descAllowed, in, overlay.GuardIngressAccepted)
	for reason, n := range a.denials() {
		counter(descDenied, n, reason)
	}
	c.collectDeniedPairs(ch) // metrics_pairs.go
	guardErrors := uint64(0)
	if !c.collectGuardDrops(ch) { // metrics_guard.go
		guardErrors = 1
	}
	counter(descRejectsSent, cnt.RejectsSent)
	counter(descRejectsLimited, cnt.RejectsLimited)
	counter(descEvictions, cnt.Evictions)
	gauge(descFlows, float64(a.engine.Flows()))

	members := a.mesh.Members()
	byState := map[mesh.NodeState]int{mesh.NodeAlive: 0, mesh.NodeSuspect: 0, mesh.NodeDead: 0, mesh.NodeLeft: 0}
	names := make(map[string]string, len(members)) // WireGuard public key -> cell name
	for _, m := range members {
		byState[m.State]++
		names[m.WGPublicKey] = m.Name
	}
	for st, n := range byState {
		gauge(descMembers, float64(n), st.String())
	}

	rules := a.mesh.Policies()
	gauge(descPolicies, float64(len(rules)))
	gauge(descPolicyVersion, float64(a.policyVersion(rules)))
	if on, _ := a.enforcing(); on {
		gauge(descEnforced, 1)
	} else {
		gauge(descEnforced, 0)
	}
	if s := a.mesh.Subnet(); s.IsValid() {
		gauge(descLease, 1, s.String())
	}
	local := a.localContainers()
	gauge(descContainers, float64(len(local)))
	if c, lost := a.mesh.Conflict(); lost {
		gauge(descConflict, float64(conflicted(c, local)), c.Subnet.String(), c.Holder)
	}
	gauge(descBuildInfo, 1, a.cfg.Version, buildinfo.GoVersion())

	peerErrors := uint64(0)
	if ov := a.overlay(); ov != nil {
		counter(descNoSession, ov.Wrapper().Stats().DroppedNoSession.Load())
		for kind, n := range ov.DriftRepairs() {
			counter(descDriftRepaired, n, kind)
		}
	}
	if a.overlayUp() {
		peers, err := readPeers(a.cfg.Interface)
		if err != nil {
			peerErrors = 1
			a.log.Debug("metrics: read WireGuard peers", "err", err)
		}
		gauge(descPeers, float64(len(peers)))
		now := time.Now()
		for _, p := range peers {
			name := names[p.PublicKey]
			counter(descPeerRx, uint64(p.RxBytes), name, p.PublicKey)
			counter(descPeerTx, uint64(p.TxBytes), name, p.PublicKey)
			if !p.LastHandshake.IsZero() {
				gauge(descPeerHandshake, now.Sub(p.LastHandshake).Seconds(), name, p.PublicKey)
			}
			if m, ok := a.peerPathMTU(p.PublicKey); ok && m.MTU > 0 {
				gauge(descPeerPathMTU, float64(m.MTU), name, p.PublicKey)
			}
		}
	}
	counter(descScrapeErrors, peerErrors, "wireguard")
	counter(descScrapeErrors, guardErrors, "guard_drops")
}

// overlayUp reports whether the data plane (and so the WireGuard device)
// exists.
func (a *Agent) overlayUp() bool { return a.overlay() != nil }

// overlay returns the data plane, or nil before the subnet lease.
func (a *Agent) overlay() *overlay.Overlay {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ov
}

// PolicyVersion is 48 bits of a SHA-256 over the sorted rules (exact in a
// float64): two cells with the same value enforce the same policy set.
func PolicyVersion(rules []policy.Rule) uint64 {
	lines := make([]string, len(rules))
	for i, r := range rules {
		lines[i] = r.String()
	}
	// mesh.Policies is sorted already; sorting the text makes the value
	// independent of that.
	slices.Sort(lines)
	sum := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return binary.BigEndian.Uint64(sum[:8]) >> 16
}

// policyVersion is PolicyVersion(rules) for rules from mesh.Policies,
// computed once per policy set: the mesh shares one sorted slice until the
// set changes, and the version of 100k rules costs some 100 ms.
func (a *Agent) policyVersion(rules []policy.Rule) uint64 {
	a.pvMu.Lock()
	defer a.pvMu.Unlock()
	if len(rules) == 0 || len(rules) != len(a.pvRules) || &rules[0] != &a.pvRules[0] {
		a.pvRules, a.pv = rules, PolicyVersion(rules)
	}
	return a.pv
}

// metricsHandler serves /metrics, /healthz and /readyz (health.go).
func (a *Agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{a},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", a.handleHealthz)
	mux.HandleFunc("GET /readyz", a.handleReadyz)
	return mux
}

// serveMetrics serves metricsHandler on addr (IP:PORT, in the agent's
// network namespace) until the returned stop is called. An address that
// cannot be bound is an error, so a typo does not go unnoticed.
func (a *Agent) serveMetrics(addr string) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: a.metricsHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics server", "addr", addr, "err", err)
		}
	}()
	a.log.Info("serving metrics", "addr", ln.Addr().String())
	return func() { srv.Close() }, nil
}
