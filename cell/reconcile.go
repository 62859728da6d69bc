package cell

import (
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/discovery"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine"
)

// The agent's reconcile loop, as tailscale's wgengine Reconfig: the whole
// data plane the mesh asks for is computed as one value (desiredState),
// compared with the value last applied, and only the parts that differ are
// handed to the overlay, the policy engine and the DNS server. The overlay
// keeps the kernel equal to what it was last told (its drift reconciler,
// overlay/drift_linux.go: peers, routes, rules, addresses, the guard's
// table); the agent keeps what the overlay is told equal to the mesh.
//
// A subnet lease that moved (a lost conflict re-picked once the cell had
// no containers there, mesh/lease.go) is one more difference: the data
// plane is rebuilt on the new subnet in place (renumberLocked).

// desired is what the data plane should be, from one read of the mesh.
// Built by desiredState only; not modified after.
type desired struct {
	subnet  netip.Prefix // this cell's settled lease; invalid while (re-)picking
	peers   []overlay.Peer
	pmtu    []pmtuTarget
	table   *tableInputs
	guard   []overlay.GuardEntry    // local containers' (host veth, address)
	appIPs  map[string][]netip.Addr // local containers' addresses by app
	egress  []policy.EgressRule
	ingress []policy.IngressRule
	dns     dnsRecords
	skew    string // versionSkew of the live members
}

// dnsRecords is what the DNS server answers and whom.
type dnsRecords struct {
	insts  []discovery.Instance // instances on live cells
	routes []discovery.Route
	local  map[netip.Addr]bool // this cell's containers: the clients it answers
}

// applied is what the last reconcile handed to the data plane, by part;
// stale marks parts whose apply failed (retried on the next pass).
type applied struct {
	desired
	stale part
}

// part names a piece of desired state.
type part uint8

const (
	partTable part = 1 << iota
	partDNS
	partPeers
	partPMTU
	partGuard
	partEgress
	partIngress
)

// desiredState reads the mesh once and computes the data plane from it.
// Called with a.mu held (it takes only the mesh's lock).
func (a *Agent) desiredState() desired {
	members := a.mesh.Members()
	subnet := a.mesh.Subnet()
	d := desired{
		subnet:  subnet,
		egress:  a.mesh.EgressRules(),
		ingress: a.mesh.IngressRules(),
		appIPs:  map[string][]netip.Addr{},
		skew:    versionSkew(members),
		table:   &tableInputs{rules: a.mesh.Policies(), subnet: subnet},
		dns:     dnsRecords{routes: a.routes(), local: map[netip.Addr]bool{}},
	}
	live := map[string]bool{a.cfg.Name: true}
	var hosts []engine.Endpoint
	for _, m := range members {
		if m.State == mesh.NodeAlive || m.State == mesh.NodeSuspect {
			live[m.Name] = true
		}
		// The cell hosts' addresses (weft0's, overlay.CellAddr): a host
		// reaches another cell's containers from it, with an ingress
		// rule from the cell hosts (docs/policy.md).
		if m.Subnet.IsValid() {
			hosts = append(hosts, engine.Endpoint{IP: overlay.CellAddr(m.Subnet), App: engine.HostApp, Local: m.Self})
		}
		if m.Self || !m.Subnet.IsValid() || !live[m.Name] {
			continue
		}
		key, err := wgtypes.ParseKey(m.WGPublicKey)
		if err != nil {
			a.log.Warn("member has an invalid WireGuard key", "member", m.Name, "err", err)
			continue
		}
		ep := netip.AddrPortFrom(m.Addr, uint16(m.WGPort))
		d.peers = append(d.peers, overlay.Peer{PublicKey: key, Endpoint: ep, AllowedIPs: []netip.Prefix{m.Subnet},
			PartialTCPChecksum: m.Features&mesh.FeatPartialTCPChecksum != 0})
		d.pmtu = append(d.pmtu, pmtuTarget{Name: m.Name, Key: m.WGPublicKey, Subnet: m.Subnet, Endpoint: ep})
	}
	for _, e := range a.mesh.Endpoints() {
		local := e.Cell == a.cfg.Name
		d.table.eps = append(d.table.eps, engine.Endpoint{IP: e.IP, App: e.App, Local: local})
		if local {
			d.dns.local[e.IP] = true
		}
		if live[e.Cell] {
			d.dns.insts = append(d.dns.insts, discovery.Instance{IP: e.IP, App: e.App, Name: e.Name})
		}
	}
	d.table.eps = append(d.table.eps, hosts...)
	for _, r := range d.ingress {
		if r.FromHost {
			d.table.hostRules = append(d.table.hostRules, r)
		}
	}
	for _, e := range a.localContainers() {
		d.guard = append(d.guard, overlay.GuardEntry{Veth: attach.HostVethName(e.Name), IP: e.IP})
		d.appIPs[e.App] = append(d.appIPs[e.App], e.IP)
	}
	return d
}

// reconcile is one pass of the agent loop: it builds the data plane on the
// mesh's subnet if that moved (renumberLocked), then applies what differs
// from the last pass. An error means the data plane cannot follow the
// mesh in process: the agent exits and its service manager restarts it.
func (a *Agent) reconcile() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	// Read under a.mu, as the handlers do: a state read before a
	// handler's change and applied after it would undo it.
	d := a.desiredState()
	if a.ov != nil && d.subnet.IsValid() && d.subnet != a.ov.LocalSubnet() {
		if err := a.renumberLocked(d.subnet); err != nil {
			return err
		}
	}
	a.applyLocked(d)
	return nil
}

// reconcileLocked is reconcile for the API handlers, with a.mu held: after
// a container or the replicated state changed, the table, guard and DNS
// follow before the request is answered. A moved subnet is left to the
// loop (kicked).
func (a *Agent) reconcileLocked() {
	d := a.desiredState()
	if a.ov != nil && d.subnet.IsValid() && d.subnet != a.ov.LocalSubnet() {
		kick(a.membersCh)
	}
	a.applyLocked(d)
}

// reconcileNow is reconcileLocked taking a.mu.
func (a *Agent) reconcileNow() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reconcileLocked()
}

// applyLocked hands the parts of d that differ from a.applied (nil:
// nothing applied yet, e.g. on a new data plane) to the engine, the
// overlay and the DNS server. Nothing is applied while the subnet is not
// settled or the data plane is on another subnet than d's: the table and
// the guard would describe a subnet that is not routed here. Needs a.mu.
func (a *Agent) applyLocked(d desired) {
	if d.skew != a.versionSkew {
		a.logVersionSkewLocked(d.skew)
	}
	if !d.subnet.IsValid() || (a.ov != nil && a.ov.LocalSubnet() != d.subnet) {
		return
	}
	prev := a.applied
	next := &applied{desired: d}
	defer func() { a.applied = next }()
	// changed reports whether part p must be applied: nothing applied
	// yet, its last apply failed, or it differs.
	changed := func(p part, same func() bool) bool {
		return prev == nil || prev.stale&p != 0 || !same()
	}
	if changed(partTable, func() bool { return d.table.equal(prev.table) }) {
		// Conntrack survives; flows whose rule is gone are cut on their
		// next packet. An unchanged table is not compiled again (50 ms
		// and 34 MB of garbage for 100k rules, and a new generation that
		// sends every tracked flow through revalidation).
		a.engine.SetTable(engine.Compile(engine.TableConfig{
			Rules:       d.table.rules,
			Endpoints:   d.table.eps,
			HostRules:   d.table.hostRules,
			LocalSubnet: d.table.subnet,
		}))
	}
	if changed(partDNS, func() bool { return d.dns.equal(prev.dns) }) {
		if a.dns.srv != nil {
			a.dns.localIPs.Store(&d.dns.local)
			a.dns.srv.SetRecords(d.dns.insts, d.dns.routes)
		} else {
			next.stale |= partDNS // not started yet
		}
	}
	if a.ov == nil {
		next.stale |= partPeers | partPMTU | partGuard | partEgress | partIngress
		return
	}
	if changed(partPeers, func() bool { return slices.EqualFunc(d.peers, prev.peers, samePeer) }) {
		if err := a.ov.SyncPeers(d.peers); err != nil {
			a.log.Error("sync WireGuard peers", "err", err)
			next.stale |= partPeers
		}
	}
	if changed(partPMTU, func() bool { return slices.Equal(d.pmtu, prev.pmtu) }) && a.pmtu != nil {
		a.pmtu.Sync(d.pmtu)
	}
	if changed(partGuard, func() bool { return slices.Equal(d.guard, prev.guard) }) {
		if _, err := a.ov.SyncGuard(d.guard); err != nil {
			a.log.Error("container source binding (nftables) not applied", "err", err)
			next.stale |= partGuard
		}
	}
	sameIPs := func() bool { return maps.EqualFunc(d.appIPs, prev.appIPs, slices.Equal) }
	if changed(partEgress, func() bool { return sameIPs() && slices.Equal(d.egress, prev.egress) }) {
		if err := a.ov.SyncEgress(d.egress, d.appIPs); err != nil {
			a.log.Error("egress rules (nftables) not applied", "err", err)
			next.stale |= partEgress
		}
	}
	if changed(partIngress, func() bool { return sameIPs() && slices.Equal(d.ingress, prev.ingress) }) {
		if err := a.ov.SyncIngress(d.ingress, d.appIPs); err != nil {
			a.log.Error("ingress rules (nftables) not applied", "err", err)
			next.stale |= partIngress
		}
	}
}

// samePeer reports whether two peers configure WireGuard alike.
func samePeer(x, y overlay.Peer) bool {
	return x.PublicKey == y.PublicKey && x.Endpoint == y.Endpoint && x.PartialTCPChecksum == y.PartialTCPChecksum &&
		slices.Equal(x.AllowedIPs, y.AllowedIPs)
}

// equal reports whether the DNS server would answer x and y alike.
func (x dnsRecords) equal(y dnsRecords) bool {
	return slices.Equal(x.insts, y.insts) && slices.Equal(x.routes, y.routes) && maps.Equal(x.local, y.local)
}

// renumberLocked rebuilds the data plane on subnet to, in process: the
// mesh re-picked this cell's lease (a lost conflict, or a takeover, once
// the cell had no containers in the old subnet: mesh/lease.go). The
// overlay is closed and started again on the new subnet (weft0's cell
// address, routes, the `iif lo` rule, guard, probe filter, partial
// checksum destinations), the DNS address put back on the new weft0 (the
// DNS server's sockets stay bound to it), and everything applied again.
// With a container still attached there is nothing safe to do in
// process: an error, and the agent exits as before (its restart path
// rebuilds from lease.json). Needs a.mu.
func (a *Agent) renumberLocked(to netip.Prefix) error {
	from := a.ov.LocalSubnet()
	if local := a.localContainers(); len(local) > 0 {
		a.log.Error("SUBNET RENUMBERED with containers attached: cannot move them; exiting so that the agent restarts on the new subnet",
			"from", from, "to", to, "containers", len(local))
		return fmt.Errorf("subnet lease moved from %v to %v with %d containers attached: exiting so that the agent restarts on the new subnet",
			from, to, len(local))
	}
	a.log.Warn("SUBNET RENUMBERED: this cell's subnet lease moved; rebuilding the data plane on the new subnet", "from", from, "to", to)
	start := time.Now()
	if a.pmtu != nil {
		a.pmtu.Close()
		a.pmtu = nil
	}
	if err := a.ov.Close(); err != nil {
		a.log.Warn("close the data plane of the old subnet", "subnet", from, "err", err)
	}
	a.applied = nil // the new data plane has nothing applied
	if err := a.startOverlayLocked(to); err != nil {
		return fmt.Errorf("subnet lease moved from %v to %v: rebuild the data plane: %w", from, to, err)
	}
	if a.dns.srv != nil {
		if err := a.ov.AddServiceAddr(a.cfg.DNSAddr); err != nil {
			a.log.Error("DNS address on the rebuilt data plane", "addr", a.cfg.DNSAddr, "err", err)
		}
	}
	a.log.Info("data plane rebuilt on the new subnet", "subnet", to, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// refuseWhileRenumberingLocked answers 503 while the data plane is not on
// the mesh's settled subnet (a re-pick under way, or settled and not yet
// rebuilt by the loop, which it kicks): a container attached now would
// get an address the data plane does not route, and keep the cell from
// rebuilding in process. Needs a.mu.
func (a *Agent) refuseWhileRenumberingLocked(w http.ResponseWriter) bool {
	s := a.mesh.Subnet()
	if a.ov == nil || s == a.ov.LocalSubnet() {
		return false
	}
	kick(a.membersCh)
	to := "a new one (being picked)"
	if s.IsValid() {
		to = s.String()
	}
	writeError(w, http.StatusServiceUnavailable, "cell %s is moving from subnet %v to %s (its lease was re-picked): retry in a few seconds",
		a.cfg.Name, a.ov.LocalSubnet(), to)
	return true
}
