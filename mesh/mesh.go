package mesh

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weft-net/weft/mesh/lease"
	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

// Config configures a Mesh. It is not mutated by New and must not be
// mutated afterwards.
type Config struct {
	Name        string         // unique node name
	BindAddr    netip.AddrPort // gossip bind and advertise address (TCP+UDP); port 0 picks one
	Join        []string       // "IP:PORT" seeds; empty means this is the first cell
	ClusterKey  []byte         // 32 bytes: AES-256 key of the encrypted gossip
	StateDir    string         // lease.json and state.json live here (0600, atomic writes)
	OverlayCIDR netip.Prefix   // default 10.255.0.0/16
	SubnetBits  int            // prefix length of one cell's subnet, default 24
	WGPublicKey string         // base64 WireGuard public key, put in the node metadata
	WGPort      int            // WireGuard UDP port, put in the node metadata
	Logger      *slog.Logger   // default slog.Default()

	// Version is the software version this cell announces in its node
	// metadata (buildinfo.Version); at most MaxVersionLen bytes of
	// printable ASCII are sent, the rest is cut.
	Version string

	// OperatorKey, if set, lets AddPolicy and RemovePolicy sign changes
	// made on this cell. Its public key must be trusted.
	OperatorKey ed25519.PrivateKey
	// TrustedOperators are the public keys whose signed policy changes
	// and keyring operations this cell accepts. Empty: none (every change
	// is refused; a warning is logged at start).
	TrustedOperators []ed25519.PublicKey
	// ClusterKeyFile, if set, is rewritten with the primary key whenever
	// a keyring operation changes it, so that `weft init --cluster-key`
	// copies the key in use.
	ClusterKeyFile string
	// LeaseHold is how long the lease of a dead (or departed) cell stays
	// reserved for its return before another cell may take it, unless the
	// pool is otherwise exhausted. Default 24h.
	LeaseHold time.Duration
	// Transport, if set, replaces memberlist's UDP+TCP transport (tests,
	// benchmarks counting bytes); BindAddr is then only used for the join
	// seeds' defaults.
	Transport memberlist.Transport

	// Tuning; the defaults fit a LAN of up to a few hundred cells.
	GossipInterval   time.Duration // default 100ms
	ProbeInterval    time.Duration // default 1s (a killed cell is declared dead in < 10 s)
	PushPullInterval time.Duration // default 15s
	JoinRetryMax     time.Duration // cap of the join retry backoff, default 10s
	// LeaseSettle is how long a newly picked subnet stays tentative:
	// announced, but not used, until it has gone this long without an
	// older claim arriving by gossip (then push/pulls with two other cells
	// must not bring one either, see lease.go). 0 (the default) adapts it to the
	// cluster: GossipInterval × (2 + ⌈log4 N⌉) for N alive cells, the
	// rounds a rumour needs to reach them all (300 ms for 2-4 cells, 500 ms
	// for 17-64, 600 ms for 65-256 at 100 ms gossip).
	LeaseSettle time.Duration

	// ignoreAlive, in tests, makes memberlist drop alive messages (gossip
	// and push/pull alike) about the nodes for which it returns true:
	// gossip lost without a partition's suspicions.
	ignoreAlive func(node string) bool
}

// DefaultConfig returns a Config with every default filled in. Name,
// ClusterKey, StateDir and the WireGuard fields must still be set.
func DefaultConfig() Config {
	return Config{
		BindAddr:         netip.AddrPortFrom(netip.IPv4Unspecified(), 7946),
		OverlayCIDR:      netip.MustParsePrefix("10.255.0.0/16"),
		SubnetBits:       24,
		GossipInterval:   100 * time.Millisecond,
		ProbeInterval:    time.Second,
		PushPullInterval: 15 * time.Second,
		JoinRetryMax:     10 * time.Second,
		LeaseHold:        24 * time.Hour,
	}
}

// MaxVersionLen bounds the version a node announces, so that the node
// metadata stays well under memberlist's 512 bytes.
const MaxVersionLen = 64

const (
	maxNameLen      = store.MaxNameLen // node, app and container names
	leaveTimeout    = 2 * time.Second  // Shutdown waits this long for the leave broadcast
	updateTimeout   = time.Second      // UpdateNode waits this long for the broadcast
	tombstoneTTL    = time.Hour        // endpoint tombstones are pruned after this
	housekeepPeriod = time.Minute
	logEvery        = 5 * time.Second // rate limit of repeated warnings
)

// NodeState is the membership state of a node.
type NodeState int

// Node states.
const (
	NodeAlive NodeState = iota
	NodeSuspect
	NodeDead
	NodeLeft
)

func (s NodeState) String() string {
	switch s {
	case NodeAlive:
		return "alive"
	case NodeSuspect:
		return "suspect"
	case NodeDead:
		return "dead"
	case NodeLeft:
		return "left"
	}
	return fmt.Sprintf("NodeState(%d)", int(s))
}

// Node is one cell as seen by this mesh.
type Node struct {
	Name        string
	Addr        netip.Addr // underlay (gossip) address
	WGPublicKey string     // base64
	WGPort      int
	Subnet      netip.Prefix // zero if no lease yet
	Features    Features     // what its data plane accepts, as it announces
	Version     string       // software version it announces; "" if it announces none (older than weft's first version that does)
	State       NodeState
	Self        bool
}

// Features are capabilities of a cell's data plane that its peers may rely
// on, announced in the node metadata. A cell that does not announce one
// (an older version, or one that turned it off) is not sent what needs it.
type Features uint32

// featureNames names the known feature bits (Features.Names).
var featureNames = []string{"partial_tcp_checksum"}

// Names lists the features in f by name, a bit this version does not know
// as "bitN", in bit order.
func (f Features) Names() []string {
	var out []string
	for i := 0; i < 32; i++ {
		if f&(1<<i) == 0 {
			continue
		}
		if i < len(featureNames) {
			out = append(out, featureNames[i])
		} else {
			out = append(out, fmt.Sprintf("bit%d", i))
		}
	}
	return out
}

// clipVersion keeps at most MaxVersionLen bytes of v, with anything but
// printable ASCII replaced by '?': a version is shown to operators, and
// gossip from an authenticated but newer (or broken) cell must not carry
// control characters into a terminal.
func clipVersion(v string) string {
	if len(v) > MaxVersionLen {
		v = v[:MaxVersionLen]
	}
	b := []byte(v)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

const (
	// FeatPartialTCPChecksum: the cell hands every TCP packet it receives
	// to its kernel as CHECKSUM_PARTIAL, so a peer may leave the checksums
	// of the TCP segments it sends it partial (docs/performance.md,
	// "TCP checksums between weft cells").
	FeatPartialTCPChecksum Features = 1 << iota
)

// Endpoint is one container: an overlay IP owned by a cell.
type Endpoint struct {
	IP   netip.Addr
	App  string
	Name string // container id
	Cell string // owner node name
}

// Listener receives change notifications. Its methods are called from one
// mesh goroutine, never concurrently, and never with a mesh lock held; they
// may call back into the Mesh getters but must not block for long.
// Notifications are coalesced: one call may stand for several changes.
type Listener interface {
	MembersChanged() // a node joined, left, died or changed its metadata (e.g. its lease)
	StateChanged()   // the merged endpoints or policies changed (local or remote)
}

// Mesh is one cell's membership in the cluster. All exported methods are
// safe for concurrent use.
type Mesh struct {
	peers      []string // from peers.json at start: joined along with cfg.Join
	peersSaved string   // the addresses peers.json holds; written by notifyLoop under mu

	cfg   Config
	log   *slog.Logger
	l     Listener
	ml    *memberlist.Memberlist
	queue *memberlist.TransmitLimitedQueue
	local netip.AddrPort // gossip address, read from memberlist once (see LocalAddr)

	numAlive  atomic.Int32  // alive nodes incl. self, for the broadcast queue
	leaving   atomic.Bool   // Shutdown began: no more metadata updates
	aeSent    atomic.Uint64 // policy registers sent in batches (antientropy.go)
	aeSkipped atomic.Uint64 // anti-entropy sends skipped: the peer's outbox was busy
	aeMaxMsg  atomic.Uint64 // the most registers one batch message carried
	sweeps    atomic.Uint64 // isolation sweeps: every peer pinged (isolation.go)
	viewPulls atomic.Uint64 // push/pulls started because views differed (views.go)
	viewMu    sync.Mutex    // guards view; taken under mu, never the other way
	view      struct {      // this cell's alive set, for probe acks (views.go)
		digest   uint64
		alive    int
		since    time.Time // when digest last changed
		pulling  bool      // a push/pull for a differing view is under way
		lastPull time.Time
		spacing  time.Duration // least time from lastPull to the next
	}
	keyring *memberlist.Keyring

	features      Features // announced in the node metadata; guarded by mu
	notifyMembers atomic.Bool
	notifyState   atomic.Bool
	mlDown        atomic.Bool // memberlist has been shut down

	kickNotify  chan struct{} // cap 1: listener notifications pending
	kickLease   chan struct{} // cap 1: lease needs a look
	kickPersist chan struct{} // cap 1: state.json is stale
	kickMeta    chan struct{} // cap 1: node metadata changed, UpdateNode due (metaLoop)
	joinedCh    chan struct{} // closed once joined
	done        chan struct{} // closed by Shutdown
	wg          sync.WaitGroup

	shutdownOnce sync.Once
	shutdownErr  error

	persistMu sync.Mutex // serialises state file writes; taken before mu

	mu          sync.Mutex
	joined      bool
	lease       store.LeaseRec // own lease; Subnet invalid when none
	leaseWait   chan struct{}  // closed and replaced when the lease changes
	leaseFinal  bool           // the lease has settled: Subnet reports it, endpoints may use it
	ls          leaseSettle    // settling of a tentative lease (lease.go)
	nodes       map[string]*member
	st          *store.Store         // the replicated state (package store)
	conflictLog time.Time            // last "refuse to renumber" / exhaustion log
	leaseErr    string               // why no lease could be taken, "" if none
	recSeen     map[string]time.Time // lease records of unseen nodes: when first known
	outboxes    map[string]*outbox   // policy batches waiting for a peer (antientropy.go)
	aeDone      map[string]time.Time // when the last send to a peer ended (antientropy.go)
	closing     bool                 // Shutdown is waiting for wg
	kr          keyringState         // applied keyring operations (keyring.go)
	isolated    bool                 // no peer answers: Members reports them dead (isolation.go)

	// afterChange, if set (by tests), is called with no lock held after
	// each change of the replicated state that the listener is told of:
	// every state a reader could see.
	afterChange atomic.Pointer[func()]
}

// member is what the mesh knows of a node from memberlist events.
type member struct {
	name     string
	addr     netip.Addr
	meta     nodeMeta
	port     uint16
	state    NodeState
	since    time.Time // when it was last seen dead or left (zero while alive)
	leaving  bool      // announced a graceful leave since it was last alive
	leaveSeq uint64    // of the last leave announcement
}

// New validates cfg, loads the persisted state, starts memberlist and
// returns at once; joining the seeds happens in the background.
func New(cfg Config, l Listener) (*Mesh, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("mesh: state dir: %w", err)
	}
	log := cfg.Logger.With("component", "mesh")
	m := &Mesh{
		cfg:         cfg,
		log:         log,
		l:           l,
		kickNotify:  make(chan struct{}, 1),
		kickLease:   make(chan struct{}, 1),
		kickPersist: make(chan struct{}, 1),
		kickMeta:    make(chan struct{}, 1),
		joinedCh:    make(chan struct{}),
		done:        make(chan struct{}),
		leaseWait:   make(chan struct{}),
		nodes:       make(map[string]*member),
		st:          store.New(cfg.Name, cfg.TrustedOperators, log),
		recSeen:     make(map[string]time.Time),
		outboxes:    make(map[string]*outbox),
		aeDone:      make(map[string]time.Time),
	}
	if m.st.NumTrusted() == 0 {
		m.log.Warn("no trusted operator keys: every policy change will be refused (weft init writes operators.pub)")
	} else if cfg.OperatorKey != nil && !m.st.Trusted(cfg.OperatorKey.Public().(ed25519.PublicKey)) {
		m.log.Warn("this cell's operator key is not among its trusted keys: its own changes will be refused")
	}
	if err := m.load(); err != nil {
		return nil, err
	}
	if err := m.loadKeyring(); err != nil {
		return nil, err
	}
	m.loadPeers()
	m.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(m.numAlive.Load()) },
		RetransmitMult: 4,
	}
	m.queue.QueueBroadcast(sentinel{})
	if len(cfg.Join) == 0 {
		// The first cell: take a lease now, before memberlist
		// announces our metadata.
		m.joined = true
		close(m.joinedCh)
		if !m.lease.Subnet.IsValid() && m.leaseStepLocked() {
			if err := m.persistLease(m.lease); err != nil {
				return nil, fmt.Errorf("mesh: %w", err)
			}
		}
	}

	ml, err := memberlist.Create(m.memberlistConfig())
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	m.ml = ml
	n := ml.LocalNode() // before any peer can make memberlist rewrite it
	m.local = netip.AddrPortFrom(addrFromIP(n.Addr), n.Port)

	m.wg.Add(2)
	go m.notifyLoop()
	go m.maintainLoop()
	if len(cfg.Join) > 0 {
		// Not in wg: a dial may block for memberlist's TCPTimeout, and
		// Shutdown must not wait for it. The loop exits on its own.
		go m.joinLoop()
	}
	go m.reconnectLoop()
	go m.isolationLoop()
	go m.metaLoop()
	m.kick(m.kickLease)
	return m, nil
}

func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.Name == "" || len(c.Name) > maxNameLen {
		return c, errors.New("mesh: Name must be 1-253 bytes")
	}
	if !c.BindAddr.IsValid() {
		c.BindAddr = d.BindAddr
	}
	if len(c.ClusterKey) != 32 {
		return c, fmt.Errorf("mesh: ClusterKey must be 32 bytes, not %d", len(c.ClusterKey))
	}
	if c.StateDir == "" {
		return c, errors.New("mesh: StateDir is required")
	}
	if !c.OverlayCIDR.IsValid() {
		c.OverlayCIDR = d.OverlayCIDR
	}
	c.OverlayCIDR = c.OverlayCIDR.Masked()
	if c.SubnetBits == 0 {
		c.SubnetBits = d.SubnetBits
	}
	if n := c.SubnetBits - c.OverlayCIDR.Bits(); n < 1 || n > 16 || c.SubnetBits > c.OverlayCIDR.Addr().BitLen()-2 {
		return c, fmt.Errorf("mesh: SubnetBits /%d does not split %s into 2..65536 usable subnets", c.SubnetBits, c.OverlayCIDR)
	}
	if c.WGPublicKey != "" {
		if k, err := base64.StdEncoding.DecodeString(c.WGPublicKey); err != nil || len(k) != 32 {
			return c, errors.New("mesh: WGPublicKey is not a base64 32-byte key")
		}
	}
	c.Version = clipVersion(c.Version)
	if c.WGPort < 0 || c.WGPort > 65535 {
		return c, fmt.Errorf("mesh: WGPort %d out of range", c.WGPort)
	}
	for _, j := range c.Join {
		if strings.TrimSpace(j) == "" {
			return c, errors.New("mesh: empty Join address")
		}
	}
	c.Join = slices.Clone(c.Join)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.OperatorKey != nil && len(c.OperatorKey) != ed25519.PrivateKeySize {
		return c, errors.New("mesh: OperatorKey is not an ed25519 private key")
	}
	for _, k := range c.TrustedOperators {
		if len(k) != ed25519.PublicKeySize {
			return c, errors.New("mesh: TrustedOperators holds a key that is not an ed25519 public key")
		}
	}
	c.TrustedOperators = slices.Clone(c.TrustedOperators)
	for _, p := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&c.GossipInterval, d.GossipInterval},
		{&c.ProbeInterval, d.ProbeInterval},
		{&c.PushPullInterval, d.PushPullInterval},
		{&c.JoinRetryMax, d.JoinRetryMax},
		{&c.LeaseHold, d.LeaseHold},
	} {
		if *p.v <= 0 {
			*p.v = p.def
		}
	}
	return c, nil
}

// suspicionMult is memberlist's SuspicionMult: a suspected cell has
// suspicionTimeout to refute before it is declared dead.
const suspicionMult = 3

// suspicionTimeout is memberlist's suspicion time (util.go
// suspicionTimeout) for n cells: suspicionMult × max(1, log10 n) ×
// the probe interval.
func suspicionTimeout(probe time.Duration, n int) time.Duration {
	scale := math.Max(1, math.Log10(float64(max(n, 1))))
	return time.Duration(float64(suspicionMult) * scale * float64(probe))
}

func (m *Mesh) memberlistConfig() *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = m.cfg.Name
	mc.BindAddr = m.cfg.BindAddr.Addr().String()
	mc.BindPort = int(m.cfg.BindAddr.Port())
	mc.AdvertisePort = mc.BindPort
	if !m.cfg.BindAddr.Addr().IsUnspecified() {
		mc.AdvertiseAddr = mc.BindAddr
	}
	mc.GossipInterval = m.cfg.GossipInterval
	mc.ProbeInterval = m.cfg.ProbeInterval
	mc.ProbeTimeout = min(mc.ProbeTimeout, m.cfg.ProbeInterval/2)
	mc.PushPullInterval = m.cfg.PushPullInterval
	// Suspicion lasts SuspicionMult*max(1,log10(n))*ProbeInterval (3 s up
	// to 10 cells, 6 s at 100), so a killed cell is dead in < 10 s. With
	// SuspicionMaxTimeoutMult above 1 a suspicion that no other member
	// confirms lasts that many times longer (memberlist suspicion.go: it
	// shrinks to the minimum as confirmations arrive). The majority side
	// of a partition gets a confirmation at once; an isolated cell never
	// does, and at 2 took 9-10 s to declare two others dead against 4-5
	// s on the other side (TestIsolatedCellDeclaresOthersDead). At 1 both
	// wait the minimum; a falsely suspected cell still has 3 s (30 gossip
	// rounds) to refute.
	mc.SuspicionMult = suspicionMult
	mc.SuspicionMaxTimeoutMult = 1
	// Each probe nobody answers (nor nacks) makes the next one last
	// longer, up to AwarenessMaxMultiplier × ProbeInterval (memberlist
	// awareness.go). At the default 8 an isolated cell of three, probing
	// one peer twice before the other, suspected the second after 1+2+3
	// s; at 2, after at most 1+2+2 s: dead within 9 s of the cut. Among
	// more cells it is later still (one probe per peer): isolation.go.
	// Shorter probes instead (500 ms, suspicion kept at 3 s) flapped
	// under CPU load (TestNoFlapUnderCPULoad).
	mc.AwarenessMaxMultiplier = 2
	mc.Keyring = m.keyring
	if m.cfg.Transport != nil {
		// The transport has bound already: advertise what it chose.
		mc.Transport = m.cfg.Transport
		mc.AdvertiseAddr, mc.AdvertisePort = "", 0
	}
	mc.Delegate = (*delegate)(m)
	mc.Events = (*events)(m)
	mc.Ping = (*pings)(m)
	if f := m.cfg.ignoreAlive; f != nil {
		mc.Alive = aliveFilter(f)
	}
	mc.Logger = slog.NewLogLogger(m.cfg.Logger.With("component", "memberlist").Handler(), slog.LevelDebug)
	return mc
}

// LocalAddr is the gossip address this cell advertises (useful with a
// BindAddr port of 0). It is read once at start: memberlist's node record
// is rewritten by its packet handler whenever an alive message about this
// cell arrives.
func (m *Mesh) LocalAddr() netip.AddrPort { return m.local }

// Subnet returns this cell's leased subnet, or the zero Prefix before the
// lease is taken.
func (m *Mesh) Subnet() netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.subnetLocked()
}

// subnetLocked is the settled lease, or the zero prefix.
func (m *Mesh) subnetLocked() netip.Prefix {
	if !m.leaseFinal {
		return netip.Prefix{}
	}
	return m.lease.Subnet
}

// WaitSubnet blocks until this cell holds a lease, ctx is done or the mesh
// is shut down.
func (m *Mesh) WaitSubnet(ctx context.Context) (netip.Prefix, error) {
	for {
		m.mu.Lock()
		p, ch := m.subnetLocked(), m.leaseWait
		m.mu.Unlock()
		if p.IsValid() {
			return p, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return netip.Prefix{}, ctx.Err()
		case <-m.done:
			return netip.Prefix{}, errors.New("mesh: shut down")
		}
	}
}

// Joined reports whether this cell has joined a cluster: a Join call
// succeeded, another cell joined it, or Config.Join is empty.
func (m *Mesh) Joined() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.joined
}

// Members returns every node known, self included, sorted by name. Dead and
// left nodes stay listed. Of several nodes claiming one subnet, only the
// winner (the older lease, or the takeover) is reported with it, this cell
// included (Subnet and Conflict still report its lease). NodeSuspect is not reported: memberlist v0.7.0
// does not expose suspicion, so a suspect node is alive until declared dead.
// While this cell is isolated (no peer has answered its probes for the
// suspicion time, isolation.go) every peer is reported dead.
func (m *Mesh) Members() []Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Node, 0, len(m.nodes)+1)
	self := Node{
		Name:        m.cfg.Name,
		WGPublicKey: m.cfg.WGPublicKey,
		WGPort:      m.cfg.WGPort,
		Subnet:      m.subnetLocked(),
		Features:    m.features,
		Version:     m.cfg.Version,
		State:       NodeAlive,
		Self:        true,
	}
	if m.mlDown.Load() {
		self.State = NodeLeft
	}
	if me := m.nodes[m.cfg.Name]; me != nil {
		self.Addr = me.addr
	}
	out = append(out, self)
	// When several nodes claim one subnet (a conflict not yet resolved),
	// only the winner is reported with it, so that every cell routes the
	// subnet to the same peer.
	winner := make(map[netip.Prefix]lease.Claim)
	consider := func(p netip.Prefix, c lease.Claim) {
		if w, ok := winner[p]; p.IsValid() && (!ok || lease.Older(c, w)) {
			winner[p] = c
		}
	}
	consider(m.lease.Subnet, lease.Claim{Node: m.cfg.Name, Time: m.lease.Time, Takeover: m.lease.Takeover})
	for name, mb := range m.nodes {
		if name != m.cfg.Name {
			consider(mb.meta.Subnet, lease.Claim{Node: name, Time: mb.meta.Time, Takeover: mb.meta.Over})
		}
	}
	if w, ok := winner[self.Subnet]; ok && w.Node != m.cfg.Name {
		out[0].Subnet = netip.Prefix{} // a conflict this cell lost: see Conflict
	}
	for name, mb := range m.nodes {
		if name == m.cfg.Name {
			continue
		}
		n := Node{
			Name:        name,
			Addr:        mb.addr,
			WGPublicKey: mb.meta.Key,
			WGPort:      mb.meta.Port,
			Subnet:      mb.meta.Subnet,
			Features:    mb.meta.Feat,
			Version:     mb.meta.Ver,
			State:       mb.state,
		}
		if m.isolated && n.State == NodeAlive {
			n.State = NodeDead
		}
		if w, ok := winner[n.Subnet]; ok && w.Node != name {
			n.Subnet = netip.Prefix{}
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// RejectedEndpoints counts endpoint entries received from peers and
// rejected because their IP was outside the owner's subnet.
func (m *Mesh) RejectedEndpoints() uint64 { return m.st.RejectedEndpoints() }

// Endpoints returns the live endpoints of all cells whose IP is inside the
// owner's current subnet, sorted by IP (then cell). When two cells hold the
// same subnet (a conflict after a partition), only the records of the cell
// whose lease wins (older lease, tie the smaller name: see older) are
// returned, so that the registry, the policy table, DNS and routes all
// follow the lease rather than the names' order.
func (m *Mesh) Endpoints() []Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leaseHoldersLocked(m.endpointsLocked())
}

// Policies returns the current policy set, sorted. The slice is shared:
// callers must not modify it.
func (m *Mesh) Policies() []policy.Rule {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Rules()
}

// LocalEndpoints returns this cell's own live endpoints, sorted by IP,
// including those Endpoints leaves out because another cell won a conflict
// over their subnet (see Conflict).
func (m *Mesh) LocalEndpoints() []Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	all := m.endpointsLocked()
	out := all[:0]
	for _, e := range all {
		if e.Cell == m.cfg.Name {
			out = append(out, e)
		}
	}
	return out
}

// SubnetConflict is a subnet conflict this cell lost: Holder, another
// cell, holds an older lease (or a takeover) of this cell's Subnet.
type SubnetConflict struct {
	Subnet netip.Prefix
	Holder string
}

// ErrSubnetConflict is returned (wrapped) by AddEndpoint while this cell
// has lost a conflict over its subnet.
var ErrSubnetConflict = errors.New("subnet conflict")

// Conflict reports the subnet conflict this cell has lost, if any. It
// lasts while the cell has containers in the contested subnet (a cell with
// containers never renumbers): Endpoints serves the holder's records, not
// this cell's, and AddEndpoint refuses new ones. Once the last of them is
// removed the cell re-picks a free subnet (Subnet changes).
func (m *Mesh) Conflict() (SubnetConflict, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conflictLocked()
}

func (m *Mesh) conflictLocked() (SubnetConflict, bool) {
	cur := m.lease.Subnet
	if !m.leaseFinal || !cur.IsValid() {
		return SubnetConflict{}, false
	}
	self := lease.Claim{Node: m.cfg.Name, Time: m.lease.Time, Takeover: m.lease.Takeover}
	if sc, taken := m.claimsLocked()[cur]; taken && !lease.Older(self, sc.Win) {
		return SubnetConflict{Subnet: cur, Holder: sc.Win.Node}, true
	}
	return SubnetConflict{}, false
}

// EgressRules returns the current egress rules, sorted. The slice is
// shared: callers must not modify it.
func (m *Mesh) EgressRules() []policy.EgressRule {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.EgressRules()
}

// IngressRules returns the current ingress rules, sorted. The slice is
// shared: callers must not modify it.
func (m *Mesh) IngressRules() []policy.IngressRule {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.IngressRules()
}

// AddEndpoint registers a local container. e.IP must be inside Subnet();
// e.Cell is ignored and set to this cell. Re-adding an identical endpoint is
// a no-op. While this cell has lost a conflict over its subnet (Conflict)
// it refuses every endpoint with an error wrapping ErrSubnetConflict.
func (m *Mesh) AddEndpoint(e Endpoint) error {
	if !e.IP.IsValid() || e.App == "" || len(e.App) > maxNameLen || len(e.Name) > maxNameLen {
		return fmt.Errorf("mesh: invalid endpoint %v app %q", e.IP, e.App)
	}
	e.IP = e.IP.Unmap()
	m.mu.Lock()
	if sub := m.subnetLocked(); !sub.Contains(e.IP) {
		m.mu.Unlock()
		return fmt.Errorf("mesh: endpoint %v is outside this cell's subnet %v", e.IP, sub)
	}
	if c, lost := m.conflictLocked(); lost {
		m.mu.Unlock()
		return fmt.Errorf("mesh: endpoint %v refused: %w: cell %s holds an older lease of %v; "+
			"remove this cell's containers in it and the cell re-picks a free subnet", e.IP, ErrSubnetConflict, c.Holder, c.Subnet)
	}
	ent, changed := m.st.SetLocalEndpoint(e.IP, e.App, e.Name, false)
	m.mu.Unlock()
	if !changed {
		return nil
	}
	return m.localChange(bcast(store.EndpointMsg(ent)))
}

// RemoveEndpoint unregisters a local container. Removing an unknown IP is a
// no-op.
func (m *Mesh) RemoveEndpoint(ip netip.Addr) error {
	m.mu.Lock()
	ent, changed := m.st.SetLocalEndpoint(ip.Unmap(), "", "", true)
	m.mu.Unlock()
	if !changed {
		return nil
	}
	m.kick(m.kickLease) // the last container of a lost subnet gone: re-pick now
	return m.localChange(bcast(store.EndpointMsg(ent)))
}

// AddPolicy adds r to the replicated policy set; added is false if it was
// already there. An error after added is true means the change is in effect
// but was not persisted.
func (m *Mesh) AddPolicy(r policy.Rule) (added bool, err error) {
	return m.setPolicy(r, true)
}

// RemovePolicy removes r from the replicated policy set; removed is false if
// it was not there.
func (m *Mesh) RemovePolicy(r policy.Rule) (removed bool, err error) {
	return m.setPolicy(r, false)
}

func (m *Mesh) setPolicy(r policy.Rule, present bool) (bool, error) {
	if err := r.Validate(); err != nil {
		return false, err
	}
	key := m.cfg.OperatorKey
	if key == nil {
		return false, store.ErrNoOperatorKey
	}
	if !m.st.Trusted(key.Public().(ed25519.PublicKey)) {
		return false, fmt.Errorf("policy change refused: signed by an untrusted key %s", store.Fingerprint(key.Public().(ed25519.PublicKey)))
	}
	probe := store.PolicyReg{Rule: store.ToWire(r), Present: true, Stamp: math.MaxUint64, Origin: m.cfg.Name,
		Signer: make([]byte, ed25519.PublicKeySize), Sig: make([]byte, ed25519.SignatureSize)}
	if len(store.Encode(store.MsgPolicy, probe)) > store.MaxMsg {
		return false, errors.New("mesh: rule too long for a gossip message")
	}
	m.mu.Lock()
	ent, changed := m.st.SetLocalPolicy(r, present, key)
	m.mu.Unlock()
	if !changed {
		return false, nil
	}
	return true, m.localChange(bcast(store.PolicyMsg(ent)))
}

// localChange broadcasts and persists a change made by this cell.
func (m *Mesh) localChange(b *broadcast) error {
	m.announce(b)
	return m.committed()
}

// announce gossips a local change and sends it straight to a few members.
func (m *Mesh) announce(b *broadcast) {
	m.queue.QueueBroadcast(b)
	m.sendDirect(b)
}

// committed tells the listener that local changes were applied and writes
// state.json; its error says the changes stand but were not persisted.
func (m *Mesh) committed() error {
	m.signal(&m.notifyState)
	if f := m.afterChange.Load(); f != nil {
		(*f)()
	}
	if err := m.persistState(); err != nil {
		m.log.Error("persisting state failed", "err", err)
		return fmt.Errorf("mesh: change applied but not persisted: %w", err)
	}
	return nil
}

// Shutdown leaves the cluster gracefully (others see this cell as left at
// once) and stops everything. It is idempotent.
func (m *Mesh) Shutdown() error {
	m.shutdownOnce.Do(func() {
		var errs []error
		m.leaving.Store(true)
		if !m.mlDown.Load() {
			m.announceLeave()
			if err := m.ml.Leave(leaveTimeout); err != nil {
				m.log.Warn("leave", "err", err)
			}
			m.mlDown.Store(true)
			errs = append(errs, m.ml.Shutdown())
		}
		m.mu.Lock()
		m.closing = true // no new background sends (queuePoliciesLocked)
		m.mu.Unlock()
		close(m.done)
		m.wg.Wait()
		errs = append(errs, m.persistState())
		m.shutdownErr = errors.Join(errs...)
	})
	return m.shutdownErr
}

// SetFeatures sets what this cell announces its data plane accepts and, if
// that changed, gossips the new node metadata. The agent calls it once its
// data plane is up and knows.
func (m *Mesh) SetFeatures(f Features) {
	m.mu.Lock()
	changed := m.features != f
	m.features = f
	m.mu.Unlock()
	if changed {
		m.kick(m.kickMeta)
		m.signal(&m.notifyMembers)
	}
}
