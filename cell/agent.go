// Package cell is the weft agent: it wires the mesh (who the other cells are,
// what the policy is), the overlay (TUN, WireGuard, routes, containers) and
// the policy engine together, and serves the local API.
package cell

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/internal/buildinfo"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/overlay"
	"github.com/weft-net/weft/policy"
	"github.com/weft-net/weft/policy/engine"
)

// Config configures an agent. Not modified after Run starts.
type Config struct {
	Name        string         // cell name, unique in the cluster
	StateDir    string         // keys, lease, replicated state
	Bind        netip.AddrPort // gossip address; WireGuard listens on WGPort
	Join        []string       // seeds "IP:PORT"
	WGPort      int
	Interface   string        // TUN device name
	OverlayCIDR netip.Prefix  // whole overlay
	SubnetBits  int           // size of a cell's lease
	MTU         int           // overlay MTU; 0: underlay MTU - 80
	Socket      string        // local API unix socket
	LeaseHold   time.Duration // a dead cell's lease is reserved this long; 0: mesh default (24h)
	MetricsAddr string        // serve Prometheus /metrics on this IP:PORT; "" = off
	Logger      *slog.Logger
	// PolicyOff bypasses the policy engine: the data path passes every
	// packet (overlay.OpenFilter). For measuring what the policy costs.
	PolicyOff  bool
	TUNBackend string // overlay.TUNAuto (""), TUNWireGuard or TUNWater
	Queues     int    // overlay.Config.Queues: TUN queues and sockets (0: by the CPUs)
	NoFastPath bool   // overlay.Config.FastPath off: the cell's IP stack carries every container packet
	// PartialTCPChecksums: leave the checksums of TCP segments partial
	// toward cells that accept them, and announce that this one does
	// (overlay.Config.PartialTCPChecksums, mesh.FeatPartialTCPChecksum).
	PartialTCPChecksums bool
	// Version is announced to the other cells and shown by status and
	// metrics; "" (the default): buildinfo.Version().
	Version string

	// Service discovery: the DNS server containers use (invalid: none),
	// the internal domains it answers, and the resolvers it forwards other
	// names to (nil: those of /etc/resolv.conf; empty: refuse them).
	DNSAddr         netip.Addr
	InternalDomains []string
	DNSUpstreams    []string
}

// DefaultConfig returns the defaults of `weft agent`.
func DefaultConfig() Config {
	return Config{
		WGPort:      51820,
		Interface:   "weft0",
		OverlayCIDR: netip.MustParsePrefix("10.255.0.0/16"),
		SubnetBits:  24,
		Socket:      cellapi.DefaultSocket,
		DNSAddr:     DefaultDNSAddr,
	}
}

// CheckOverlayCIDR refuses an overlay the data plane cannot carry: an
// IPv6 prefix (containers, routes and the guard are IPv4 only), before the
// agent leases anything or touches the kernel.
func CheckOverlayCIDR(p netip.Prefix) error {
	if p.IsValid() && !p.Addr().Is4() {
		return fmt.Errorf("--overlay-cidr %s: IPv6 overlays are not supported yet; give an IPv4 prefix such as 10.255.0.0/16", p)
	}
	return nil
}

// Agent is a running cell.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	keys   *Keys
	engine *engine.Engine
	mesh   *mesh.Mesh
	flows  flowLogs    // where the engine's flow log goes (flowlog.go)
	live   liveWatches // probe watches of live traces (trace_live.go)
	gdrops guardDrops  // the guard's drops by app (metrics_guard.go)

	pvMu    sync.Mutex    // guards pvRules, pv
	pvRules []policy.Rule // the mesh.Policies slice pv was computed from
	pv      uint64        // PolicyVersion(pvRules)

	membersCh chan struct{} // kicked by the mesh listener
	stateCh   chan struct{}
	ready     chan struct{} // closed once the data plane is up
	stopping  atomic.Bool   // Run is returning: not ready any more

	mu          sync.Mutex       // serialises container changes and reconciles
	ov          *overlay.Overlay // guarded by mu; nil until the subnet lease is taken
	pmtu        *pmtuProber      // guarded by mu; path MTU probes (pmtu.go), nil with ov or without a probe socket
	applied     *applied         // guarded by mu: what the last reconcile applied (reconcile.go); nil: nothing yet
	versionSkew string           // guarded by mu: the last version skew logged (logVersionSkewLocked)
	enf         enforcement      // guarded by mu
	dns         agentDNS         // srv guarded by mu
}

// Run runs the agent until ctx is cancelled, then leaves the mesh and
// removes the data plane (containers stay).
func Run(ctx context.Context, cfg Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Version == "" {
		cfg.Version = buildinfo.Version()
	}
	if cfg.Name == "" {
		return errors.New("--name is required")
	}
	if !cfg.Bind.IsValid() {
		return errors.New("--bind IP:PORT is required")
	}
	if err := CheckOverlayCIDR(cfg.OverlayCIDR); err != nil {
		return err
	}
	keys, err := LoadKeys(cfg.StateDir)
	if err != nil {
		return err
	}
	ln, err := listenSocket(cfg.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)
	defer ln.Close()

	a := &Agent{
		cfg:       cfg,
		log:       cfg.Logger.With("cell", cfg.Name),
		keys:      keys,
		engine:    engine.NewEngine(engine.DefaultConfig()),
		membersCh: make(chan struct{}, 1),
		stateCh:   make(chan struct{}, 1),
		ready:     make(chan struct{}),
	}
	a.engine.SetTable(engine.Compile(engine.TableConfig{}))

	mcfg := mesh.DefaultConfig()
	mcfg.Name = cfg.Name
	mcfg.BindAddr = cfg.Bind
	mcfg.Join = cfg.Join
	mcfg.ClusterKey = keys.Cluster
	mcfg.StateDir = cfg.StateDir
	mcfg.OverlayCIDR = cfg.OverlayCIDR
	mcfg.SubnetBits = cfg.SubnetBits
	mcfg.WGPublicKey = keys.WireGuard.PublicKey().String()
	mcfg.WGPort = cfg.WGPort
	mcfg.Version = cfg.Version
	mcfg.Logger = cfg.Logger
	mcfg.LeaseHold = cfg.LeaseHold
	mcfg.ClusterKeyFile = filepath.Join(cfg.StateDir, ClusterKeyFile)
	if mcfg.OperatorKey, mcfg.TrustedOperators, err = LoadOperators(cfg.StateDir); err != nil {
		return err
	}
	a.mesh, err = mesh.New(mcfg, meshListener{a})
	if err != nil {
		return fmt.Errorf("start mesh on %v: %w", cfg.Bind, err)
	}
	defer a.mesh.Shutdown()
	if err := a.applyEgressDefault(); err != nil {
		return fmt.Errorf("egress default: %w", err)
	}

	srv := a.newServer()
	go srv.Serve(ln)
	defer srv.Close()
	stopMetrics, err := a.serveMetrics(cfg.MetricsAddr)
	if err != nil {
		return err
	}
	defer stopMetrics()
	a.log.Info("agent started", "version", cfg.Version, "bind", cfg.Bind, "join", cfg.Join, "socket", cfg.Socket,
		"public_key", keys.WireGuard.PublicKey().String())

	subnet, err := a.mesh.WaitSubnet(ctx)
	if err != nil {
		return nil // cancelled before we had a lease
	}
	if err := a.startOverlay(subnet); err != nil {
		return err
	}
	defer a.stopOverlay()
	a.startEgressLog(ctx.Done())
	if err := a.startDNS(ctx); err != nil {
		return fmt.Errorf("service discovery: %w", err)
	}
	a.notifyReady(subnet)
	err = a.loop(ctx)
	a.stopping.Store(true)
	a.notify("STOPPING=1")
	if err != nil {
		return err
	}
	a.log.Info("agent stopping")
	return nil
}

// startOverlay builds the data plane on the cell's first settled subnet,
// takes back the containers found in the kernel and applies the mesh.
func (a *Agent) startOverlay(subnet netip.Prefix) error {
	a.engine.ResumeTracking() // flows may be under way from before a restart
	if a.cfg.PolicyOff {
		a.log.Warn("policy enforcement is off: every packet passes")
	}
	a.mu.Lock()
	a.enf.off, a.enf.warned = a.cfg.PolicyOff, time.Now()
	if err := a.startOverlayLocked(subnet); err != nil {
		a.mu.Unlock()
		return err
	}
	a.recoverContainersLocked()
	a.reconcileLocked()
	a.mu.Unlock()
	close(a.ready)
	return nil
}

// startOverlayLocked creates the overlay on subnet (with the engine, or
// the open filter while enforcement is off) and its path MTU prober. At
// start and when the lease moved (renumberLocked). Needs a.mu.
func (a *Agent) startOverlayLocked(subnet netip.Prefix) error {
	ocfg := overlay.DefaultConfig()
	ocfg.Interface = a.cfg.Interface
	ocfg.MTU = a.cfg.MTU
	if ocfg.MTU == 0 {
		ocfg.MTU = underlayMTU(a.cfg.Bind.Addr(), a.log) - 80
	}
	ocfg.PrivateKey = a.keys.WireGuard
	ocfg.ListenPort = a.cfg.WGPort
	ocfg.OverlayCIDR = a.cfg.OverlayCIDR
	ocfg.LocalSubnet = subnet
	ocfg.Filter = a.engine
	if a.enf.off {
		ocfg.Filter = overlay.OpenFilter{LocalSubnet: subnet}
	}
	ocfg.TUNBackend = a.cfg.TUNBackend
	ocfg.Queues = a.cfg.Queues
	ocfg.FastPath = !a.cfg.NoFastPath
	ocfg.PartialTCPChecksums = a.cfg.PartialTCPChecksums
	ocfg.DNS = a.cfg.DNSAddr
	ocfg.Logger = a.log
	ov, err := overlay.New(ocfg)
	if err != nil {
		return err
	}
	pm, err := startPMTU(ov, a.log, defaultPMTUTiming(), a.serveCellCall)
	if err != nil {
		a.log.Warn("path MTU is not probed: peers keep the overlay MTU", "err", err)
	}
	a.ov, a.pmtu = ov, pm
	if ov.AcceptsPartialTCPChecksum() {
		a.mesh.SetFeatures(mesh.FeatPartialTCPChecksum)
	}
	return nil
}

// waitReady waits until the data plane is up, the request is cancelled, or
// timeout passes. Requests that need the data plane made right after the
// agent started wait for it instead of failing.
func (a *Agent) waitReady(ctx context.Context, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-a.ready:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}

func (a *Agent) stopOverlay() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pmtu != nil {
		a.pmtu.Close()
	}
	if a.ov != nil {
		a.ov.Close()
	}
}

// loop reconciles the data plane with the mesh (reconcile.go) on every
// membership or replicated-state change, and every 5 s a pass that also
// catches what a missed notification left behind and expires idle flows.
// It returns an error when the data plane cannot follow the mesh in
// process (renumberLocked).
func (a *Agent) loop(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.membersCh:
		case <-a.stateCh:
		case now := <-tick.C:
			a.engine.ExpireFlows(now)
			a.warnEnforcementOff(now)
		}
		if err := a.reconcile(); err != nil {
			return err
		}
	}
}

// denials returns the packets dropped on this cell by reason: the policy
// engine's verdicts and the guard's kernel counters together (a spoofed
// source is counted as "spoofed" whichever of the two caught it).
func (a *Agent) denials() map[string]uint64 {
	out := map[string]uint64{}
	for v, n := range a.engine.Counters().All() {
		if !v.Allowed() {
			out[v.String()] += n
		}
	}
	if ov := a.overlay(); ov != nil {
		if g, err := ov.GuardCounters(); err == nil {
			out[overlay.GuardSpoofed] += g.Spoofed
			out[overlay.GuardToCell] += g.ToCell
			out[overlay.GuardNotIPv4] += g.NotIPv4
			out[overlay.GuardEgress] += g.Egress
			out[overlay.GuardIngress] += g.Ingress
		}
	}
	return out
}

// egressAccepted returns the packets that egress rules let out of this
// cell, and ingress rules into its containers (0 before the overlay is
// up).
func (a *Agent) egressAccepted() (egress, ingress uint64) {
	if ov := a.overlay(); ov != nil {
		if g, err := ov.GuardCounters(); err == nil {
			return g.EgressAccepted, g.IngressAccepted
		}
	}
	return 0, 0
}

// tableInputs are what a policy table is compiled from.
type tableInputs struct {
	rules     []policy.Rule
	eps       []engine.Endpoint
	hostRules []policy.IngressRule
	subnet    netip.Prefix
}

// equal reports whether x and y (nil: no table compiled yet) compile to
// the same table.
func (x *tableInputs) equal(y *tableInputs) bool {
	return y != nil && x.subnet == y.subnet && slices.Equal(x.rules, y.rules) && slices.Equal(x.eps, y.eps) &&
		slices.Equal(x.hostRules, y.hostRules)
}

// localContainers returns this cell's containers, sorted by name, those
// in a subnet whose conflict this cell lost included (mesh.Conflict).
func (a *Agent) localContainers() []mesh.Endpoint {
	out := a.mesh.LocalEndpoints()
	slices.SortFunc(out, func(x, y mesh.Endpoint) int {
		if x.Name < y.Name {
			return -1
		}
		if x.Name > y.Name {
			return 1
		}
		return 0
	})
	return out
}

// meshListener turns mesh notifications into kicks of the agent loop; it
// never blocks.
type meshListener struct{ a *Agent }

func (l meshListener) MembersChanged() { kick(l.a.membersCh) }
func (l meshListener) StateChanged()   { kick(l.a.stateCh) }

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// underlayMTU is the MTU of the link that holds addr, 1500 if unknown.
func underlayMTU(addr netip.Addr, log *slog.Logger) int {
	links, err := netlink.LinkList()
	if err == nil {
		for _, l := range links {
			addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				continue
			}
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
					return l.Attrs().MTU
				}
			}
		}
	}
	log.Warn("cannot find the underlay link, assuming MTU 1500", "addr", addr)
	return 1500
}

// listenSocket listens on the API socket, root-only. Whatever is at path
// already is removed only when it is a stale socket (a unix socket nobody
// answers on); a socket another agent serves, or anything else (a regular
// file, a directory, a symlink), is an error and stays as it was.
func listenSocket(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("--socket is required")
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// removeStaleSocket removes path if it is a unix socket that refuses
// connections; nothing there is fine too.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("--socket %s: there is %s there, not a socket: refusing to replace it (remove it yourself or choose another --socket)",
			path, describeFile(fi))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("socket %s is already served by another agent: stop it or choose another --socket", path)
	case !errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("--socket %s: cannot tell whether the socket there is stale (%v): refusing to replace it", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// describeFile names the kind of file fi is, for error messages.
func describeFile(fi fs.FileInfo) string {
	switch t := fi.Mode().Type(); {
	case t == 0:
		return fmt.Sprintf("a regular file (%d bytes)", fi.Size())
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeSymlink != 0:
		return "a symlink"
	default:
		return "a " + t.String() + " file"
	}
}
