// Package overlay owns a cell's data plane: the TUN device, the embedded
// wireguard-go device with the filtering wrapper between them, the WireGuard
// peers, the routes and rules that steer container traffic through the TUN,
// and the guard that binds each container's source address to its veth. The
// plumbing of a container's network namespace and veth is package attach's,
// called with this overlay's settings (containers_linux.go).
//
// It does not know about the mesh: the agent tells it which peers exist.
package overlay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Config configures an Overlay. It is not modified after New.
type Config struct {
	Interface     string       // TUN device name; also names the UAPI socket /var/run/wireguard/NAME.sock
	MTU           int          // overlay MTU (underlay MTU - 80)
	PrivateKey    wgtypes.Key  // WireGuard private key
	ListenPort    int          // WireGuard UDP port
	OverlayCIDR   netip.Prefix // whole overlay, routed to the TUN
	LocalSubnet   netip.Prefix // this cell's subnet (its containers)
	DeliveryTable int          // routing table with the /32 routes of local containers
	RulePriority  int          // priority of the first of the two policy-routing rules
	Filter        Filter       // the policy engine
	TUNBackend    string       // TUNAuto (""), TUNWireGuard or TUNWater
	// MessageBuffers bounds WireGuard's 64 KiB message buffers, all
	// allocated once and kept across garbage collections (bufpool.go):
	// 0 means DefaultMessageBuffers, negative wireguard-go's unbounded
	// pool; WEFT_WG_BUFFERS overrides.
	MessageBuffers int
	// PartialTCPChecksums leaves the checksum of the TCP segments split off
	// a GSO packet partial toward peers that accept it (Peer.
	// PartialTCPChecksum) and toward this cell's own containers, instead
	// of summing every segment (partial.go). It needs the wireguard TUN
	// backend; see Overlay.AcceptsPartialTCPChecksum.
	PartialTCPChecksums bool
	// DNS is the cell's DNS service address, the one address of the cell
	// its containers may reach (guard_linux.go); invalid: none.
	DNS netip.Addr
	// DataPath is DataPathInline ("", the default: each packet carried
	// from read to send by the routine that read it) or DataPathQueued
	// (upstream wireguard-go's crypto workers and per-peer routines);
	// WEFT_WG_DATAPATH overrides. See datapath.go.
	DataPath string
	// Queues is the number of TUN queues on the inline data path, each
	// read by its own goroutine that runs to completion, and of UDP
	// sockets per family on the WireGuard port (SO_REUSEPORT), each with
	// its own receiver: 0 is one per CPU up to MaxQueues, one below 3
	// CPUs (datapath.go); 1 is one.
	// WEFT_TUN_QUEUES overrides. See datapath.go.
	Queues int
	// FastPath sends a container's packets to the overlay from its veth
	// straight to the TUN (an eBPF program per veth, fastpath_linux.go)
	// when the guard would let them through untouched.
	FastPath bool
	// DriftInterval is how often drift repair compares everything when
	// no kernel notification came (drift_linux.go); 0: DefaultDriftInterval.
	DriftInterval time.Duration
	Logger        *slog.Logger
}

// DefaultConfig returns the defaults; callers fill in keys, subnet and filter.
func DefaultConfig() Config {
	return Config{
		Interface:     "weft0",
		MTU:           1420,
		ListenPort:    51820,
		OverlayCIDR:   netip.MustParsePrefix("10.255.0.0/16"),
		DeliveryTable: 30565, // 0x7765, "we"
		RulePriority:  100,
	}
}

// Peer is a remote cell as WireGuard sees it.
type Peer struct {
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	// PartialTCPChecksum: the peer accepts TCP segments whose checksum is
	// left partial (it announces mesh.FeatPartialTCPChecksum); the TCP
	// segments split off a GSO packet for its AllowedIPs are sent so.
	PartialTCPChecksum bool
}

// Overlay is a running data plane. Its methods are safe for concurrent use.
type Overlay struct {
	cfg  Config
	log  *slog.Logger
	wrap *Wrapper
	dev  *device.Device
	bufs *msgPool   // nil: wireguard-go's own pool
	gate *stageGate // nil with wireguard-go's own pool
	stop chan struct{}
	uapi net.Listener
	wg   *wgctrl.Client // configures the device over uapi (configure)

	backend string    // TUN backend in use
	queues  int       // TUN queues, and UDP sockets per family (datapath.go)
	guard   *guard    // the nftables table that fences containers
	fast    *fastPath // nil: the cell's IP stack carries every container packet
	drift   *reconciler
	partial partialTCP

	mu     sync.Mutex
	peers  map[wgtypes.Key]Peer // guarded by mu: what was last configured
	closed bool                 // guarded by mu
}

// New creates the TUN device, the WireGuard device on top of it (with its
// UAPI socket, so `wg show IFACE` works), and the routes and rules of the
// data path.
func New(cfg Config) (*Overlay, error) {
	if cfg.Filter == nil {
		return nil, errors.New("overlay: no filter")
	}
	if !cfg.LocalSubnet.IsValid() || !cfg.OverlayCIDR.Contains(cfg.LocalSubnet.Addr()) {
		return nil, fmt.Errorf("overlay: local subnet %v is not inside overlay %v", cfg.LocalSubnet, cfg.OverlayCIDR)
	}
	if len(cfg.Interface) == 0 || len(cfg.Interface) > 15 {
		return nil, fmt.Errorf("overlay: interface name %q must be 1-15 characters", cfg.Interface)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "overlay", "interface", cfg.Interface)

	dataPath, err := dataPathOf(cfg)
	if err != nil {
		return nil, err
	}
	queues, err := queuesOf(cfg, dataPath)
	if err != nil {
		return nil, err
	}
	tdev, backend, queues, err := createTUN(cfg, queues, log)
	if err != nil {
		return nil, err
	}
	o := &Overlay{cfg: cfg, log: log, peers: make(map[wgtypes.Key]Peer), backend: backend, stop: make(chan struct{})}
	o.wrap = NewWrapper(tdev, cfg.Filter)
	o.wrap.probe = newProbeFilter(cfg.LocalSubnet)
	o.initPartial(tdev)
	if dataPath == DataPathInline {
		// Read every packet the TUN has queued, up to a batch: a burst
		// of small packets leaves in one sendmmsg (WEFT-PATCHES.md).
		tun.SetReadDrain(tdev, true)
	}
	// Run to completion reads the UDP sockets through weft's own bind:
	// raw recvmmsg/sendmmsg, no allocation per datagram (WEFT-PATCHES.md).
	bind := conn.NewDefaultBind()
	opts := device.Options{RunToCompletion: dataPath == DataPathInline}
	if dataPath == DataPathInline {
		// More queues of the TUN, each with a reader of its own, and
		// as many sockets (datapath.go).
		more, err := moreQueues(tdev, queues)
		if err != nil {
			tdev.Close()
			return nil, err
		}
		for _, q := range more {
			opts.TUNQueues = append(opts.TUNQueues, o.wrap.Queue(q))
		}
		o.queues = 1 + len(more)
		bind = conn.NewDirectBindQueues(o.queues)
		log.Info("data path inline", "queues", o.queues)
	}
	nbufs := o.startDevice(bind, messageBuffers(cfg, o.queues), opts)

	fail := func(err error) (*Overlay, error) {
		o.Close()
		return nil, err
	}
	if err := o.listenUAPI(); err != nil {
		return fail(err)
	}
	port := cfg.ListenPort
	if err := o.configure(wgtypes.Config{PrivateKey: &cfg.PrivateKey, ListenPort: &port}); err != nil {
		return fail(fmt.Errorf("configure WireGuard (port %d): %w", cfg.ListenPort, err))
	}
	if err := o.dev.Up(); err != nil {
		return fail(fmt.Errorf("bring WireGuard device up: %w", err))
	}

	if err := setupRouting(cfg); err != nil {
		return fail(fmt.Errorf("routing for %s: %w", cfg.Interface, err))
	}
	o.guard = newGuard(cfg.Interface, cfg.DNS, cfg.ListenPort, cfg.OverlayCIDR)
	o.guard.cell = CellAddr(cfg.LocalSubnet)
	if err := o.guard.install(); err != nil {
		return fail(err)
	}
	if cfg.FastPath {
		o.fast = newFastPath(log, cfg.Interface, CellAddr(cfg.LocalSubnet), cfg.OverlayCIDR)
	}
	o.drift = newReconciler(cfg, log, o.guard, o.peerDrift)
	o.guard.reinstalled = func() {
		o.drift.count(DriftNFTables)
		o.drift.log.Info("drift repaired", "kind", DriftNFTables, "object", "table inet "+GuardTable, "drift", "missing")
	}
	go o.drift.run()
	log.Info("data plane up", "mtu", cfg.MTU, "listen_port", cfg.ListenPort,
		"subnet", cfg.LocalSubnet, "tun_backend", backend, "offloads", tdev.BatchSize() > 1,
		"message_buffers", nbufs, "data_path", dataPath)
	return o, nil
}

// SyncGuard makes the guard's (veth, address) bindings equal to want: a
// packet from a container veth with any other source is dropped and
// counted. It reports whether the kernel's set changed. It also re-installs
// the guard's table if something removed it.
func (o *Overlay) SyncGuard(want []GuardEntry) (bool, error) {
	o.drift.setContainers(want)
	changed, err := o.guard.Sync(want)
	if err == nil && o.fast != nil {
		// After the guard: a veth's program never runs before its binding.
		if ferr := o.fast.Sync(want); ferr != nil {
			o.log.Warn("fast path", "err", ferr)
		}
	}
	return changed, err
}

// DriftRepairs returns the repairs of drift so far by kind (DriftKinds,
// all present): state of the overlay that something else changed and
// that it put back (drift_linux.go).
func (o *Overlay) DriftRepairs() map[string]uint64 {
	return o.drift.counts()
}

// GuardCounters returns the packets the guard dropped, by reason.
func (o *Overlay) GuardCounters() (GuardCounters, error) {
	return o.guard.Counters()
}

// GuardDropsByVeth returns the guard's drops by container veth and
// reason (guard_drops_linux.go).
func (o *Overlay) GuardDropsByVeth() ([]VethDrops, error) {
	return o.guard.DropsByVeth()
}

// GuardEntries returns the (veth, address) bindings the kernel's guard
// holds, sorted.
func (o *Overlay) GuardEntries() ([]GuardEntry, error) {
	return o.guard.Entries()
}

// startDevice creates the WireGuard device on o.wrap and bind, with at
// most nbufs message buffers (0: wireguard-go's unbounded pool) and, when
// they are bounded, the stage gate, which the wrapper has before the
// device's TUN reader reads its first packet. It returns the bound in
// effect.
func (o *Overlay) startDevice(bind conn.Bind, nbufs int, opts device.Options) int {
	if nbufs > 0 {
		p, err := newMsgPool(nbufs)
		if err != nil {
			o.log.Warn("WireGuard message buffers stay unbounded", "err", err)
			nbufs = 0
		} else {
			o.bufs, opts.MessageBuffers = p, p
			// Bounded buffers: keep peers without a session from
			// holding them. The gate is in the wrapper before
			// wireguard-go's TUN reader exists.
			o.gate = newStageGate()
			o.wrap.gate.Store(o.gate)
		}
	}
	o.dev = device.NewDeviceWithOptions(o.wrap, bind, wgLogger(o.log), opts)
	if nbufs > 0 {
		go o.gate.poll(o.dev, o.log, o.stop)
	}
	return nbufs
}

// listenUAPI opens the device's UAPI socket, /var/run/wireguard/IFACE.sock,
// answers wg(8) and wgctrl on it until Close, and opens the wgctrl client
// through which the overlay configures the device (configure).
func (o *Overlay) listenUAPI() error {
	uf, err := ipc.UAPIOpen(o.cfg.Interface)
	if err != nil {
		return fmt.Errorf("open UAPI socket for %s: %w", o.cfg.Interface, err)
	}
	o.uapi, err = ipc.UAPIListen(o.cfg.Interface, uf)
	if err != nil {
		uf.Close()
		return fmt.Errorf("listen on UAPI socket for %s: %w", o.cfg.Interface, err)
	}
	go func() {
		for {
			c, err := o.uapi.Accept()
			if err != nil {
				return
			}
			go func() {
				o.dev.IpcHandle(c)
				// wg(8) may have changed the peers.
				o.drift.kick(checkPeers)
			}()
		}
	}()
	o.wg, err = wgctrl.New()
	if err != nil {
		return fmt.Errorf("wgctrl client for %s: %w", o.cfg.Interface, err)
	}
	return nil
}

// configure applies cfg to the device through wgctrl, over the UAPI socket
// as wg(8) does, so that the agent and an operator's `wg set` take the same
// path. wireguard-go answers a refused setting with an errno only; it logs
// the reason (wgLogger). Called with o.mu held, or before o is shared: a
// wgctrl.Client is not safe for concurrent use.
func (o *Overlay) configure(cfg wgtypes.Config) error {
	return o.wg.ConfigureDevice(o.cfg.Interface, cfg)
}

// LocalSubnet is the cell's subnet the data plane is built on (the zero
// Prefix on a nil Overlay: none built).
func (o *Overlay) LocalSubnet() netip.Prefix {
	if o == nil {
		return netip.Prefix{}
	}
	return o.cfg.LocalSubnet
}

// Wrapper returns the filtering TUN wrapper (its counters, its filter).
func (o *Overlay) Wrapper() *Wrapper { return o.wrap }

// TUNBackend returns the TUN backend in use, TUNWireGuard or TUNWater.
func (o *Overlay) TUNBackend() string { return o.backend }

// Config returns the configuration the overlay was created with.
func (o *Overlay) Config() Config { return o.cfg }

// SyncPeers makes the WireGuard peer set equal to want: peers not in want
// are removed, new ones added, changed ones updated.
func (o *Overlay) SyncPeers(want []Peer) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return errors.New("overlay closed")
	}
	return o.syncPeersLocked(want)
}

// syncPeersLocked is SyncPeers with o.mu held. It changes what differs
// between o.peers (what it believes the device has) and want; drift repair
// (drift_peers.go) sets o.peers to what the device really has first.
func (o *Overlay) syncPeersLocked(want []Peer) error {
	peers, next, later := peerDiff(o.cfg.PrivateKey.PublicKey(), o.peers, want)
	if len(peers) > 0 {
		if err := o.configure(wgtypes.Config{Peers: peers}); err != nil {
			return fmt.Errorf("update WireGuard peers: %w", err)
		}
		if len(later) > 0 {
			time.AfterFunc(KeepaliveDelay, func() { o.keepaliveOn(later) })
		}
		for k, p := range next {
			if _, ok := o.peers[k]; !ok {
				o.log.Info("peer added", "key", k.String(), "endpoint", p.Endpoint, "allowed_ips", p.AllowedIPs)
			}
		}
		for k, p := range o.peers {
			if _, ok := next[k]; !ok {
				o.log.Info("peer removed", "key", k.String(), "endpoint", p.Endpoint)
			}
		}
		if o.gate != nil {
			o.gate.setPeers(next)
		}
	}
	// Also without a WireGuard change: Peer.PartialTCPChecksum may differ.
	o.peers = next
	o.setPartialPeersLocked()
	return nil
}

// keepaliveOn turns keepalive on for the given peers that are still
// configured (see initiates).
func (o *Overlay) keepaliveOn(keys []wgtypes.Key) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	var peers []wgtypes.PeerConfig
	for _, k := range keys {
		if _, ok := o.peers[k]; ok {
			peers = append(peers, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &keepaliveInterval})
		}
	}
	if len(peers) == 0 {
		return
	}
	if err := o.configure(wgtypes.Config{Peers: peers}); err != nil {
		o.log.Warn("turn on WireGuard keepalive", "err", err)
	}
}

// Close removes routing rules, the WireGuard device and the TUN device.
// Containers stay attached: they belong to the cell, not to this process.
func (o *Overlay) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	close(o.stop)
	o.mu.Unlock()
	o.drift.stop() // before the rules go, or it would put them back
	if o.fast != nil {
		o.fast.Close()
	}
	err := teardownRouting(o.cfg)
	if o.wg != nil {
		o.wg.Close()
	}
	if o.uapi != nil {
		o.uapi.Close()
	}
	o.dev.Close() // closes the TUN device too
	o.bufs.close()
	return err
}

func wgLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf: func(format string, args ...any) {
			log.Error("wireguard: " + fmt.Sprintf(format, args...))
		},
	}
}
