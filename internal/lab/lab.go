// Package lab runs a weft network on one machine inside network namespaces.
//
// A lab is an underlay bridge namespace ("<run>-ul"), N cell namespaces
// ("<run>-c1".."<run>-cN") each joined to the bridge by a veth pair and
// addressed 198.18.0.(10+i)/24, and one real `weft agent` process per cell
// running inside its namespace. Containers are network namespaces the agents
// create when the CLI asks (Lab.CreateContainer). It is used by the e2e tests,
// the benchmarks and `make demo`.
//
// Naming and safety: every namespace and interface a lab makes starts with
// its run prefix "wl<pid>" (pid of the process running the lab), so at most
// one lab is open per process. Nothing in the caller's network namespace is
// changed; the bridge lives in its own namespace. New first deletes stale
// namespaces "wl<pid>-*" (and WireGuard UAPI sockets "wl<pid>c*.sock") whose
// process is gone. Close stops the agents by PID and deletes everything of
// its run; it also runs on SIGINT/SIGTERM, and agents get SIGKILL when the
// process running the lab dies (Pdeathsig), so a crashed run leaves only
// namespaces that the next run removes.
package lab

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Address plan of every lab.
const (
	// UnderlayPrefix holds the cells' underlay addresses, 198.18.0.(10+i).
	UnderlayPrefix = "198.18.0.0/24"
	// OverlayPrefix is the overlay CIDR the agents lease subnets from.
	OverlayPrefix = "10.255.0.0/16"
	// GossipPort is the memberlist port every agent binds.
	GossipPort = 7946
	// WireGuardPort is the UDP port every agent's WireGuard device listens on.
	WireGuardPort = 51820
	// MaxCells is the most cells one underlay /24 can address.
	MaxCells = 244

	familyPrefix = "wl"
	netnsDir     = "/run/netns"
	uapiDir      = "/var/run/wireguard"
)

// Config describes a lab. It is not modified after New.
type Config struct {
	// Cells is the number of cells created by New (at least 1).
	Cells int
	// WeftBin is the path of a built weft binary. It may be empty only
	// with NoStart, and then the cells are not initialised either.
	WeftBin string
	// Dir holds state dirs, sockets and logs (t.TempDir() in tests). When
	// empty, New makes a temporary directory and Close removes it.
	Dir string
	// Logf reports lab progress; nil discards it.
	Logf func(format string, args ...any)
	// AgentArgs are appended to every `weft agent` command line.
	AgentArgs []string
	// NoStart creates the topology (and state dirs) but starts no agent.
	NoStart bool
	// SubnetTimeout bounds the wait for an agent's subnet lease;
	// 0 means 20 s.
	SubnetTimeout time.Duration
}

// Lab is a running netns lab. Its methods are safe for concurrent use;
// Cells must not be modified by callers (AddCell appends to it, so read it
// only from the goroutine that calls AddCell).
type Lab struct {
	// Run is the run prefix, "wl<pid>".
	Run string
	// Underlay is the namespace holding the underlay bridge.
	Underlay string
	// Dir is the working directory.
	Dir string
	// Cells are the cells, Cells[i-1] has Index i.
	Cells []*Cell

	cfg       Config
	bridge    string
	ownDir    bool   // Dir was made by New and is removed by Close
	sockDir   string // short directory for sockets when Dir is too long, or ""
	closed    atomic.Bool
	hosts     atomic.Int32 // AddUnderlayHost's count
	closeOnce sync.Once
	closeErr  error

	mu   sync.Mutex   // guards Cells growth in AddCell, and side
	side map[int]bool // cells on the second bridge (Partition); nil: not split
}

// Cell is one weft host of the lab.
type Cell struct {
	Index      int        // 1-based
	Netns      string     // "<run>-c<i>"
	UnderlayIP netip.Addr // 198.18.0.(10+i)
	GossipAddr string     // "198.18.0.(10+i):7946"
	Interface  string     // TUN name "<run>c<i>", also names the UAPI socket
	StateDir   string     // the agent's --state-dir
	Socket     string     // the agent's local API socket
	LogPath    string     // stdout+stderr of every run of the agent

	name       string // the agent's --name, "c<i>" unless AddCellWith named it
	cellLink   string // veth end in the cell namespace, "<run>u<i>"
	bridgeLink string // veth end on the bridge, "<run>b<i>"

	mu   sync.Mutex // guards proc
	proc *agentProc // nil when not running
}

// agentProc is one run of an agent process.
type agentProc struct {
	pid     int
	process *os.Process
	exited  chan struct{} // closed when the process has been reaped
	err     error         // exit status; valid after exited is closed
}

// PID returns the process id of the cell's agent, or 0 if it is not running.
func (c *Cell) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil || c.proc.done() {
		return 0
	}
	return c.proc.pid
}

func (p *agentProc) done() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// RunPrefix returns the run prefix of labs made by this process, "wl<pid>".
func RunPrefix() string { return familyPrefix + strconv.Itoa(os.Getpid()) }

// New builds a lab: stale cleanup, underlay bridge, cells, `weft init` for
// each cell, and (unless cfg.NoStart) the agents, returning once every
// cell has leased its subnet. On error everything made so far is removed.
func New(cfg Config) (*Lab, error) {
	if cfg.Cells < 1 || cfg.Cells > MaxCells {
		return nil, fmt.Errorf("lab: Cells = %d, want 1..%d", cfg.Cells, MaxCells)
	}
	if cfg.WeftBin == "" && !cfg.NoStart {
		return nil, errors.New("lab: WeftBin is required unless NoStart")
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.SubnetTimeout <= 0 {
		cfg.SubnetTimeout = 20 * time.Second
	}
	run := RunPrefix()
	l := &Lab{
		Run:      run,
		Underlay: run + "-ul",
		Dir:      cfg.Dir,
		cfg:      cfg,
		bridge:   run + "br",
	}
	if err := register(l); err != nil {
		return nil, err
	}
	if err := l.build(); err != nil {
		var logs bytes.Buffer
		l.DumpLogs(&logs)
		if logs.Len() > 0 {
			cfg.Logf("lab: New failed; agent logs:\n%s", logs.String())
		}
		if cerr := l.Close(); cerr != nil {
			cfg.Logf("lab: cleanup after failed New: %v", cerr)
		}
		return nil, err
	}
	return l, nil
}

// build does the work of New after the lab is registered for cleanup.
func (l *Lab) build() error {
	if l.Dir == "" {
		dir, err := os.MkdirTemp("", l.Run+"-")
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		l.Dir, l.ownDir = dir, true
	}
	// A unix socket path must fit in 108 bytes.
	if len(filepath.Join(l.Dir, "c000.sock")) > 100 {
		dir, err := os.MkdirTemp("", l.Run+"-sock-")
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		l.sockDir = dir
	}
	// Leftovers of dead runs have other prefixes than ours, so they cannot
	// collide with this lab; failing to remove one (another lab removing
	// it at the same moment: EBUSY, ENOENT) is logged, not fatal.
	if err := CleanupStale(l.cfg.Logf); err != nil {
		l.cfg.Logf("lab: stale cleanup (not ours, continuing): %v", err)
	}
	if err := l.createUnderlay(); err != nil {
		return err
	}
	for i := 1; i <= l.cfg.Cells; i++ {
		c := l.newCell(i)
		l.Cells = append(l.Cells, c)
		if err := l.createCell(c); err != nil {
			return err
		}
		if l.cfg.WeftBin != "" {
			if err := l.initCell(c); err != nil {
				return err
			}
		}
	}
	l.cfg.Logf("lab %s: %d cells on %s", l.Run, len(l.Cells), UnderlayPrefix)
	if l.cfg.NoStart {
		return nil
	}
	// Cell 1 first: the others join it, so it must be listening.
	if err := l.StartCell(1); err != nil {
		return err
	}
	errs := make([]error, len(l.Cells))
	var wg sync.WaitGroup
	for _, c := range l.Cells[1:] {
		wg.Go(func() { errs[c.Index-1] = l.StartCell(c.Index) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// newCell fills in the names and paths of cell i.
func (l *Lab) newCell(i int) *Cell {
	ip := netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})
	sockDir := l.Dir
	if l.sockDir != "" {
		sockDir = l.sockDir
	}
	name := "c" + strconv.Itoa(i)
	return &Cell{
		Index:      i,
		name:       name,
		Netns:      l.Name(name),
		UnderlayIP: ip,
		GossipAddr: netip.AddrPortFrom(ip, GossipPort).String(),
		Interface:  l.Run + name,
		StateDir:   filepath.Join(l.Dir, name),
		Socket:     filepath.Join(sockDir, name+".sock"),
		LogPath:    filepath.Join(l.Dir, name+".log"),
		cellLink:   l.Run + "u" + strconv.Itoa(i),
		bridgeLink: l.Run + "b" + strconv.Itoa(i),
	}
}

// Name returns s with the run prefix, "<run>-s": use it for container names
// so that Close and stale cleanup find them.
func (l *Lab) Name(s string) string { return l.Run + "-" + s }

// Cell returns cell i (1-based), or an error naming the valid range.
func (l *Lab) Cell(i int) (*Cell, error) {
	if l.closed.Load() {
		return nil, errors.New("lab: closed")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if i < 1 || i > len(l.Cells) {
		return nil, fmt.Errorf("lab: no cell %d (have 1..%d)", i, len(l.Cells))
	}
	return l.Cells[i-1], nil
}

// cells returns a snapshot of the cells.
func (l *Lab) cells() []*Cell {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Cell(nil), l.Cells...)
}

// AddCell creates a new cell that joins the running lab (namespace, veth,
// weft init, agent) and returns once it has leased its subnet.
func (l *Lab) AddCell() (*Cell, error) {
	c, err := l.newCellOf("")
	if err != nil {
		return c, err
	}
	if l.cfg.NoStart && l.cfg.WeftBin == "" {
		return c, nil
	}
	if err := l.initCell(c); err != nil {
		return c, err
	}
	return c, l.StartCell(c.Index)
}

// newCellOf appends a new cell (agent name: name, or "c<i>") and creates
// its namespace and veth.
func (l *Lab) newCellOf(name string) (*Cell, error) {
	if l.closed.Load() {
		return nil, errors.New("lab: closed")
	}
	l.mu.Lock()
	i := len(l.Cells) + 1
	if i > MaxCells {
		l.mu.Unlock()
		return nil, fmt.Errorf("lab: at most %d cells", MaxCells)
	}
	c := l.newCell(i)
	if name != "" {
		c.name = name
	}
	l.Cells = append(l.Cells, c)
	l.mu.Unlock()
	return c, l.createCell(c)
}

// Close stops every agent (SIGTERM, SIGKILL after 5 s) and deletes every
// namespace of the run (containers included), the UAPI sockets of its
// interfaces and the directories New made. It is idempotent: later calls
// return the first call's result.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		var errs []error
		var wg sync.WaitGroup
		for _, c := range l.cells() {
			wg.Go(func() {
				if err := c.stop(syscall.SIGTERM, 5*time.Second); err != nil {
					l.cfg.Logf("lab: %v", err)
				}
			})
		}
		wg.Wait()
		errs = append(errs, deleteNetnsMatching(func(name string) bool {
			return len(name) > len(l.Run) && name[:len(l.Run)+1] == l.Run+"-"
		}))
		errs = append(errs, removeUAPISockets(func(pid string) bool { return familyPrefix+pid == l.Run }))
		if l.sockDir != "" {
			errs = append(errs, os.RemoveAll(l.sockDir))
		}
		if l.ownDir {
			errs = append(errs, os.RemoveAll(l.Dir))
		}
		unregister(l)
		l.closeErr = errors.Join(errs...)
		l.cfg.Logf("lab %s: closed", l.Run)
	})
	return l.closeErr
}

// DumpLogs writes the last lines of every agent log to w.
func (l *Lab) DumpLogs(w io.Writer) {
	for _, c := range l.cells() {
		lines := tailLines(c.LogPath, 60)
		if lines == nil {
			continue
		}
		fmt.Fprintf(w, "--- %s agent log (last %d lines of %s) ---\n", c.Netns, len(lines), c.LogPath)
		for _, line := range lines {
			fmt.Fprintln(w, line)
		}
	}
}

// tailLines returns the last n lines of the file at path, nil if it
// cannot be read.
func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	ring := []string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		ring = append(ring, sc.Text())
		if len(ring) > n {
			ring = ring[1:]
		}
	}
	return ring
}

// registry keeps the open labs for the signal handler and enforces one
// open lab per process (they would share names).
var registry struct {
	sync.Mutex
	open map[string]*Lab
	sigc chan os.Signal
	stop chan struct{}
}

func register(l *Lab) error {
	registry.Lock()
	defer registry.Unlock()
	if registry.open == nil {
		registry.open = make(map[string]*Lab)
	}
	if _, dup := registry.open[l.Run]; dup {
		return fmt.Errorf("lab: a lab with run prefix %s is already open in this process", l.Run)
	}
	registry.open[l.Run] = l
	if len(registry.open) == 1 {
		sigc, stop := make(chan os.Signal, 1), make(chan struct{})
		registry.sigc, registry.stop = sigc, stop
		signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
		go onSignal(sigc, stop)
	}
	return nil
}

func unregister(l *Lab) {
	registry.Lock()
	defer registry.Unlock()
	if registry.open[l.Run] != l {
		return
	}
	delete(registry.open, l.Run)
	if len(registry.open) == 0 {
		signal.Stop(registry.sigc)
		close(registry.stop)
		registry.sigc, registry.stop = nil, nil
	}
}

// onSignal closes every open lab on SIGINT/SIGTERM, then delivers the
// signal again with its default action.
func onSignal(sigc chan os.Signal, stop chan struct{}) {
	select {
	case <-stop:
		return
	case sig := <-sigc:
		registry.Lock()
		labs := make([]*Lab, 0, len(registry.open))
		for _, l := range registry.open {
			labs = append(labs, l)
		}
		registry.Unlock()
		for _, l := range labs {
			fmt.Fprintf(os.Stderr, "lab %s: %v, cleaning up\n", l.Run, sig)
			l.Close()
		}
		signal.Reset(sig)
		syscall.Kill(os.Getpid(), sig.(syscall.Signal))
	}
}
