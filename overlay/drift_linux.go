package overlay

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/attach"
)

// Drift repair: the reconciler puts back what the overlay owns in the
// kernel and in the WireGuard device when something else changed it (an
// operator's `ip route del`, `wg set weft0 peer KEY remove`, `nft delete
// table inet weft`, a script cleaning up interfaces).
//
// Contract:
//
//   - Desired state is what the overlay already computes: the routing recipe
//     of setupRouting (weft0 up with the cell's address, the overlay route in
//     the main table, the policy-routing rules), for each container told by
//     SyncGuard its host veth up with Gateway and its /32 in the delivery
//     table, the guard's table as last written, and the WireGuard peers as
//     SyncPeers last configured them. It compares that with the kernel and
//     the device and changes only the difference, with the same functions
//     that made the state (overlayRoute, containerRoute, rules, guard build,
//     syncPeersLocked), so a route carries the attributes the overlay gives
//     it. Routes are compared by destination, table and device; peers by key
//     and allowed IPs (not endpoint: WireGuard roams). It never removes a
//     route, rule or address it does not own; in the WireGuard device and
//     the guard's set, which are weft's alone, it removes what is extra.
//   - It cannot recreate what only a container's attach makes (a deleted
//     veth) or the TUN itself; those are left alone.
//   - It wakes on kernel notifications (rtnetlink links, IPv4 addresses,
//     routes and rules; nftables changes), after every connection to the
//     UAPI socket (wg(8), wgctrl), and every Interval as a backstop.
//   - Each repair is counted by kind (Repairs; weft_drift_repaired_total)
//     and logged as "drift repaired" naming the object. It does not fight
//     forever: an object repaired (or failing to be) more than
//     driftFreeRepairs times in a row, without a quiet driftQuiet between,
//     waits 2 s, 4 s, ... up to driftMaxBackoff before the next attempt,
//     with a warning naming it.
//   - run is the only goroutine; it and the notification readers it starts
//     end when stop returns. The kernel state lives in the network
//     namespace of the thread that runs run (the agent's, which is the
//     whole process's).

// Kinds of drift, the label of weft_drift_repaired_total.
const (
	DriftPeer     = "peer"     // a WireGuard peer removed, added or with other allowed IPs
	DriftLink     = "link"     // weft0 or a container's host veth set down
	DriftAddress  = "address"  // the cell's address on weft0, Gateway on a host veth
	DriftRoute    = "route"    // the overlay route, a container's delivery route
	DriftRule     = "rule"     // a policy-routing rule
	DriftNFTables = "nftables" // the guard's table, its chains, rules or bindings
)

// DriftKinds are the kinds of drift, in the order of Repairs.
var DriftKinds = []string{DriftPeer, DriftLink, DriftAddress, DriftRoute, DriftRule, DriftNFTables}

// DefaultDriftInterval is how often the reconciler compares everything
// when no notification came.
const DefaultDriftInterval = 5 * time.Second

const (
	driftFreeRepairs = 3                // repairs of one object in a row before backing off
	driftQuiet       = 30 * time.Second // an object fine this long starts afresh
	driftMaxBackoff  = 5 * time.Minute
)

// What a pass checks: bits of reconciler.pending.
const (
	checkNetlink = 1 << iota
	checkNFTables
	checkPeers
	checkAll = checkNetlink | checkNFTables | checkPeers
)

// drift is one difference between desired and actual state.
type drift struct {
	kind   string
	object string // names the object, e.g. "route 10.255.0.0/16 dev weft0 table 254"
	detail string // what differs, e.g. "missing"
	fix    func() error
}

// attempt is the repair history of one object (kind + object).
type attempt struct {
	n    int       // repairs in a row
	last time.Time // of the last repair
	next time.Time // no repair before
}

// reconciler restores the overlay's state; see the contract above.
type reconciler struct {
	cfg      Config
	log      *slog.Logger
	guard    *guard                  // nil: the guard is not checked
	peers    func() ([]drift, error) // nil: peers are not checked
	interval time.Duration           // full compare
	repaired [6]atomic.Uint64        // by index in DriftKinds
	kicks    chan struct{}           // cap 1: a notification came
	pending  atomic.Uint32           // check* bits the notifications ask for
	done     chan struct{}           // closed by stop
	exited   chan struct{}           // closed when run returns
	stopOnce sync.Once               //
	errs     map[string]string       // run only: the last error of each check, logged once
	attempts map[string]*attempt     // run only: by kind + object
	chains   map[string]bool         // run only: the guard's base chains as first seen: had rules

	cmu        sync.Mutex            // held while containers' state is checked and repaired
	containers map[string]netip.Addr // guarded by cmu: host veth -> container address (SyncGuard)
}

func newReconciler(cfg Config, log *slog.Logger, g *guard, peers func() ([]drift, error)) *reconciler {
	iv := cfg.DriftInterval
	if iv <= 0 {
		iv = DefaultDriftInterval
	}
	return &reconciler{
		cfg: cfg, log: log, guard: g, peers: peers, interval: iv,
		kicks: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{}),
		errs: map[string]string{}, attempts: map[string]*attempt{},
		containers: map[string]netip.Addr{},
	}
}

// kick asks for a check of what (check* bits) soon. It never blocks; safe
// on a nil reconciler.
func (r *reconciler) kick(what uint32) {
	if r == nil {
		return
	}
	r.pending.Or(what)
	select {
	case r.kicks <- struct{}{}:
	default:
	}
}

// setContainers makes want (host veth -> address) the containers whose
// veth state is kept.
func (r *reconciler) setContainers(want []GuardEntry) {
	if r == nil {
		return
	}
	m := make(map[string]netip.Addr, len(want))
	for _, e := range want {
		m[e.Veth] = e.IP
	}
	r.cmu.Lock()
	r.containers = m
	r.cmu.Unlock()
}

// forgetContainer stops keeping the veth state of container id; call it
// before its veth is deleted.
func (r *reconciler) forgetContainer(id string) {
	if r == nil {
		return
	}
	r.cmu.Lock()
	delete(r.containers, attach.HostVethName(id))
	r.cmu.Unlock()
}

// stop ends run and the notification readers and waits for them. Safe to
// call more than once, and on a nil reconciler.
func (r *reconciler) stop() {
	if r == nil {
		return
	}
	r.stopOnce.Do(func() { close(r.done) })
	<-r.exited
}

// counts returns the repairs by kind.
func (r *reconciler) counts() map[string]uint64 {
	out := make(map[string]uint64, len(DriftKinds))
	for i, k := range DriftKinds {
		if r != nil {
			out[k] = r.repaired[i].Load()
		} else {
			out[k] = 0
		}
	}
	return out
}

// count records one repair of kind.
func (r *reconciler) count(kind string) {
	if i := slices.Index(DriftKinds, kind); i >= 0 {
		r.repaired[i].Add(1)
	}
}

// run compares and repairs until stop. It runs on one goroutine.
func (r *reconciler) run() {
	defer close(r.exited)
	var readers sync.WaitGroup
	var socks []*nl.NetlinkSocket
	subscribe := func(what uint32, name string, proto int, groups ...uint) {
		s, err := nl.Subscribe(proto, groups...)
		if err != nil {
			r.log.Warn("no kernel notifications: drift is found by the periodic compare only",
				"of", name, "every", r.interval, "err", err)
			return
		}
		socks = append(socks, s)
		readers.Add(1)
		go func() {
			defer readers.Done()
			r.readNotifications(s, what, name)
		}()
	}
	subscribe(checkNetlink, "rtnetlink", unix.NETLINK_ROUTE,
		unix.RTNLGRP_LINK, unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV4_RULE)
	if r.guard != nil {
		subscribe(checkNFTables, "nftables", unix.NETLINK_NETFILTER, unix.NFNLGRP_NFTABLES)
	}
	defer func() {
		for _, s := range socks {
			s.Close() // ends the reader's Receive
		}
		readers.Wait()
	}()

	tick := time.NewTicker(r.interval)
	defer tick.Stop()
	r.pass(checkAll, true)
	for {
		select {
		case <-r.done:
			return
		case <-r.kicks:
			r.pass(r.pending.Swap(0), false)
		case <-tick.C:
			r.pending.Store(0)
			r.pass(checkAll, true)
		}
	}
}

// readNotifications kicks the loop for every message on s until s is
// closed. A full receive buffer (ENOBUFS: notifications were lost) is a
// kick too.
func (r *reconciler) readNotifications(s *nl.NetlinkSocket, what uint32, name string) {
	for {
		_, _, err := s.Receive()
		select {
		case <-r.done:
			return
		default:
		}
		if err != nil && !errors.Is(err, unix.ENOBUFS) {
			r.log.Warn("kernel notifications ended: drift is found by the periodic compare only",
				"of", name, "every", r.interval, "err", err)
			return
		}
		r.kick(what)
	}
}

// pass checks what (check* bits) and repairs the differences. full: a
// periodic pass, after which objects that were fine for driftQuiet are
// forgotten.
func (r *reconciler) pass(what uint32, full bool) {
	now := time.Now()
	found := map[string]bool{}
	if what&checkNetlink != 0 {
		r.cmu.Lock()
		d, err := r.netlinkDrift()
		r.checked("netlink", err)
		r.apply(d, now, found)
		r.cmu.Unlock()
	}
	if what&checkNFTables != 0 && r.guard != nil {
		d, err := r.guardDrift()
		r.checked("nftables", err)
		r.apply(d, now, found)
	}
	if what&checkPeers != 0 && r.peers != nil {
		d, err := r.peers()
		r.checked("wireguard", err)
		r.apply(d, now, found)
	}
	if full {
		for k, a := range r.attempts {
			if !found[k] && now.Sub(a.last) > driftQuiet {
				delete(r.attempts, k)
			}
		}
	}
}

// checked logs a check's error once until it changes.
func (r *reconciler) checked(check string, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if r.errs[check] == msg {
		return
	}
	r.errs[check] = msg
	if err != nil {
		r.log.Warn("drift check failed", "check", check, "err", err)
	}
}

// apply repairs each drift whose object is not backing off.
func (r *reconciler) apply(ds []drift, now time.Time, found map[string]bool) {
	for _, d := range ds {
		key := d.kind + " " + d.object
		found[key] = true
		a := r.attempts[key]
		if a == nil {
			a = &attempt{}
			r.attempts[key] = a
		}
		if now.Before(a.next) {
			continue
		}
		if now.Sub(a.last) > driftQuiet {
			a.n = 0
		}
		a.n++
		a.last = now
		err := d.fix()
		var wait time.Duration
		if a.n > driftFreeRepairs {
			wait = min(2*time.Second<<min(a.n-driftFreeRepairs-1, 16), driftMaxBackoff)
			a.next = now.Add(wait)
		}
		switch {
		case err != nil:
			r.log.Error("drift repair failed", "kind", d.kind, "object", d.object, "drift", d.detail,
				"err", err, "attempt", a.n, "next_in", max(wait, r.interval))
		default:
			r.count(d.kind)
			r.log.Info("drift repaired", "kind", d.kind, "object", d.object, "drift", d.detail)
			if wait > 0 {
				r.log.Warn("drift keeps coming back: something else is changing what weft owns; backing off",
					"kind", d.kind, "object", d.object, "repairs_in_a_row", a.n, "next_in", wait)
			}
		}
	}
}

// netlinkDrift compares links, addresses, routes and rules with what the
// overlay made. Needs r.cmu. Drift is returned in repair order: links
// first (a link set down loses its routes), rules last.
func (r *reconciler) netlinkDrift() ([]drift, error) {
	// One dump of links and one of addresses, whatever the number of
	// containers: a pass runs on every notification.
	all, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	byName := make(map[string]netlink.Link, len(all))
	for _, l := range all {
		byName[l.Attrs().Name] = l
	}
	tun, ok := byName[r.cfg.Interface]
	if !ok {
		return nil, fmt.Errorf("%s is gone", r.cfg.Interface)
	}
	have, err := netlink.AddrList(nil, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	addrSet := make(map[string]bool, len(have))
	for _, a := range have {
		if a.IPNet != nil {
			addrSet[fmt.Sprint(a.LinkIndex, " ", a.IPNet)] = true
		}
	}

	var links, addrs, routes []drift
	var errs error
	links = appendLinkDrift(links, tun)
	addrs = appendAddrDrift(addrs, addrSet, tun, cellAddrOf(r.cfg))
	routes, err = appendRouteDrift(routes, unix.RT_TABLE_MAIN, []*netlink.Route{overlayRoute(r.cfg, tun.Attrs().Index)},
		map[int]string{tun.Attrs().Index: r.cfg.Interface})
	errs = errors.Join(errs, err)

	var delivery []*netlink.Route
	names := map[int]string{}
	for veth, ip := range r.containers {
		l, ok := byName[veth]
		if !ok {
			continue // detached, or not yet attached: not ours to make
		}
		links = appendLinkDrift(links, l)
		addrs = appendAddrDrift(addrs, addrSet, l, attach.GatewayAddr())
		delivery = append(delivery, attach.ContainerRoute(l.Attrs().Index, ip, r.cfg.DeliveryTable))
		names[l.Attrs().Index] = veth
	}
	routes, err = appendRouteDrift(routes, r.cfg.DeliveryTable, delivery, names)
	errs = errors.Join(errs, err)

	rules, err := ruleDrift(rules(r.cfg))
	errs = errors.Join(errs, err)
	return slices.Concat(links, addrs, routes, rules), errs
}

func appendLinkDrift(out []drift, l netlink.Link) []drift {
	if l.Attrs().Flags&net.FlagUp != 0 {
		return out
	}
	name := l.Attrs().Name
	return append(out, drift{kind: DriftLink, object: "link " + name, detail: "down", fix: func() error {
		return netlink.LinkSetUp(l)
	}})
}

// appendAddrDrift: want on l, unless have ("INDEX PREFIX") holds it.
func appendAddrDrift(out []drift, have map[string]bool, l netlink.Link, want *netlink.Addr) []drift {
	if have[fmt.Sprint(l.Attrs().Index, " ", want.IPNet)] {
		return out
	}
	return append(out, drift{kind: DriftAddress, object: fmt.Sprintf("address %v dev %s", want.IPNet, l.Attrs().Name),
		detail: "missing", fix: func() error { return netlink.AddrReplace(l, want) }})
}

// appendRouteDrift compares the routes of table with want by destination
// and device (names: device names by index, for the log).
func appendRouteDrift(out []drift, table int, want []*netlink.Route, names map[int]string) ([]drift, error) {
	if len(want) == 0 {
		return out, nil
	}
	have, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return out, fmt.Errorf("routes of table %d: %w", table, err)
	}
	byDst := map[string]netlink.Route{}
	for _, h := range have {
		if h.Dst != nil {
			byDst[h.Dst.String()] = h
		}
	}
	for _, w := range want {
		h, ok := byDst[w.Dst.String()]
		if ok && h.LinkIndex == w.LinkIndex {
			continue
		}
		detail := "missing"
		if ok {
			detail = fmt.Sprintf("via device %d", h.LinkIndex)
		}
		w := w
		out = append(out, drift{kind: DriftRoute, object: fmt.Sprintf("route %v dev %s table %d", w.Dst, names[w.LinkIndex], table),
			detail: detail, fix: func() error {
				w.Table = table
				return netlink.RouteReplace(w)
			}})
	}
	return out, nil
}

// ruleDrift returns the rules of want that the kernel lacks.
func ruleDrift(want []*netlink.Rule) ([]drift, error) {
	have, err := netlink.RuleList(unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	var out []drift
	for _, w := range want {
		if slices.ContainsFunc(have, func(h netlink.Rule) bool { return sameRule(h, w) }) {
			continue
		}
		w := w
		out = append(out, drift{kind: DriftRule, object: ruleString(w), detail: "missing", fix: func() error {
			err := netlink.RuleAdd(w)
			if errors.Is(err, unix.EEXIST) {
				return nil
			}
			return err
		}})
	}
	return out, nil
}

// sameRule compares what rules() sets.
func sameRule(h netlink.Rule, w *netlink.Rule) bool {
	dst := func(n *net.IPNet) string {
		if n == nil {
			return ""
		}
		return n.String()
	}
	return h.Priority == w.Priority && h.Table == w.Table && h.IifName == w.IifName &&
		h.Mark == w.Mark && dst(h.Dst) == dst(w.Dst)
}

func ruleString(r *netlink.Rule) string {
	s := fmt.Sprintf("rule %d:", r.Priority)
	if r.IifName != "" {
		s += " iif " + r.IifName
	}
	if r.Dst != nil {
		s += " to " + r.Dst.String()
	}
	if r.Mark != 0 {
		s += fmt.Sprintf(" fwmark %#x", r.Mark)
	}
	return s + fmt.Sprintf(" lookup %d", r.Table)
}

// guardDrift compares the guard's table with what it last wrote: the table, its
// set and its base chains present (those that had rules when first seen
// still with some), the set's bindings
// those of the last Sync. A table that lacks any part is installed again
// whole (with the last bindings and egress rules); bindings alone are
// rewritten.
func (r *reconciler) guardDrift() ([]drift, error) {
	g := r.guard
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	reinstall := func(detail string) []drift {
		return []drift{{kind: DriftNFTables, object: "table inet " + GuardTable, detail: detail, fix: g.reinstall}}
	}
	if t, err := c.ListTableOfFamily(GuardTable, nftables.TableFamilyINet); err != nil || t == nil {
		return reinstall("missing"), nil
	}
	have, err := g.readLocked(c)
	if err != nil {
		return reinstall("set containers missing"), nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	base := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table.Name == GuardTable && ch.Hooknum != nil {
			base[ch.Name] = ch
		}
	}
	if r.chains == nil {
		// First look at a complete table (New installed it just now):
		// these are the chains it has, and whether each had rules.
		r.chains = map[string]bool{}
		for name, ch := range base {
			rules, err := c.GetRules(g.table, ch)
			if err != nil {
				r.chains = nil
				return nil, fmt.Errorf("nftables: rules of chain %s: %w", name, err)
			}
			r.chains[name] = len(rules) > 0
		}
	}
	for _, name := range slices.Sorted(maps.Keys(r.chains)) {
		ch, ok := base[name]
		if !ok {
			return reinstall("chain " + name + " missing"), nil
		}
		if !r.chains[name] {
			continue // was empty: its rules are not weft's to keep
		}
		rules, err := c.GetRules(g.table, ch)
		if err != nil {
			return nil, fmt.Errorf("nftables: rules of chain %s: %w", name, err)
		}
		if len(rules) == 0 {
			return reinstall("chain " + name + " has no rules"), nil
		}
	}
	if !slices.Equal(have, g.last) {
		return []drift{{kind: DriftNFTables, object: "set inet " + GuardTable + " containers",
			detail: fmt.Sprintf("%d bindings, want %d", len(have), len(g.last)), fix: g.rewriteSet}}, nil
	}
	return nil, nil
}

// reinstall replaces the table with one built from what was last written.
func (g *guard) reinstall() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if t, _ := c.ListTableOfFamily(GuardTable, nftables.TableFamilyINet); t != nil {
		c.DelTable(g.table)
	}
	if err := g.buildLocked(c, g.last); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: re-install table inet %s: %w", GuardTable, err)
	}
	return nil
}

// rewriteSet makes the set's bindings those last written.
func (g *guard) rewriteSet() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	set := g.set()
	c.FlushSet(set)
	if len(g.last) > 0 {
		if err := c.SetAddElements(set, g.elements(g.last)); err != nil {
			return fmt.Errorf("nftables: set elements: %w", err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: rewrite set containers: %w", err)
	}
	return nil
}
