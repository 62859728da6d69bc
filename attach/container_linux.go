package attach

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Gateway is the link-local address of the host end of every container's
// veth. Containers route everything via it (like silk's 169.254.0.1).
var Gateway = netip.MustParseAddr("169.254.0.1")

// NetnsDir is where named network namespaces are bind-mounted, as by
// `ip netns add`.
const NetnsDir = "/run/netns"

// ErrContainerExists is returned when a container name is already used by a
// network namespace.
var ErrContainerExists = errors.New("container name already in use")

var containerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// ValidContainerName reports whether name can name a container (and so its
// network namespace).
func ValidContainerName(name string) error {
	if !containerName.MatchString(name) {
		return fmt.Errorf("invalid container name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// HostVethName is the name of the cell-side veth of container name.
func HostVethName(name string) string {
	sum := sha256.Sum256([]byte(name))
	return "wc" + hex.EncodeToString(sum[:5])
}

func peerVethName(name string) string {
	sum := sha256.Sum256([]byte(name))
	return "wp" + hex.EncodeToString(sum[:5])
}

// Config says how the cell end of every attachment is made. It is not
// changed after the first attach.
type Config struct {
	MTU           int          // of both ends of every veth
	DeliveryTable int          // the routing table that holds each container's /32
	LocalSubnet   netip.Prefix // the cell's subnet: its /32s in DeliveryTable are containers'
}

// Container creates network namespace name (visible in `ip netns
// list`), a veth pair between it and the cell, gives the container ip/32 with
// a default route via Gateway, and adds ip/32 to the delivery table. On error
// nothing is left behind.
func Container(cfg Config, name string, ip netip.Addr) (err error) {
	if err := ValidContainerName(name); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(NetnsDir, name)); err == nil {
		return fmt.Errorf("%w: network namespace %q exists", ErrContainerExists, name)
	}
	ns, err := newNamedNetns(name)
	if err != nil {
		return fmt.Errorf("create network namespace %q: %w", name, err)
	}
	defer ns.Close()
	defer func() {
		if err != nil {
			DetachContainer(name)
		}
	}()
	_, err = attachVeth(vethSpec{id: name, ns: ns, ifname: "eth0", ip: ip, mtu: cfg.MTU, table: cfg.DeliveryTable})
	return err
}

// vethSpec says how to connect one container network namespace to the cell.
type vethSpec struct {
	id     string         // container id: names the veth pair (HostVethName)
	ns     netns.NsHandle // the container's network namespace
	ifname string         // name of the container end inside ns
	ip     netip.Addr     // the container's overlay address
	mtu    int
	table  int // delivery table
}

// attachVeth is the part of an attach shared by named namespaces
// ([Container]) and the runtime's namespaces ([Netns]): a veth pair
// between the cell and s.ns, the container end configured as s.ifname with
// s.ip/32 and a default route via Gateway, the cell end with Gateway, a
// static neighbour entry and the /32 in the delivery table. On error the
// caller removes the host veth (deleting it removes both ends).
//
// It works from the cell's namespace through netlink handles bound to
// s.ns, not as containernetworking/plugins' pkg/ip.SetupVethWithName does
// (inside the container's namespace, by a thread setns through pkg/ns.Do):
// that would save the LinkAdd/LinkSetNsFd/rename steps here, but switch
// threads between namespaces and bring go-iptables and ethtool into the
// agent, for the same calls to the same netlink library.
func attachVeth(s vethSpec) (Attachment, error) {
	hostName, peerName := HostVethName(s.id), peerVethName(s.id)
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostName, MTU: s.mtu},
		PeerName:  peerName,
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return Attachment{}, fmt.Errorf("create veth %s: %w", hostName, err)
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return Attachment{}, err
	}
	// The guard binds the container's source to this veth: no second
	// FIB lookup for the reverse path (docs/architecture.md).
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+hostName+"/accept_local", []byte("1"), 0o644); err != nil {
		return Attachment{}, fmt.Errorf("accept_local on %s: %w", hostName, err)
	}
	peer, err := netlink.LinkByName(peerName)
	if err != nil {
		return Attachment{}, err
	}
	if err := netlink.LinkSetNsFd(peer, int(s.ns)); err != nil {
		return Attachment{}, fmt.Errorf("move %s into the container's network namespace: %w", peerName, err)
	}
	ctrMAC, err := configureContainerSide(s.ns, peerName, s.ifname, s.ip, s.mtu, host.Attrs().HardwareAddr)
	if err != nil {
		return Attachment{}, fmt.Errorf("configure container %s: %w", s.id, err)
	}

	// Cell side: the gateway address, a static neighbour entry for the
	// container and its /32 in the delivery table.
	if err := netlink.AddrAdd(host, GatewayAddr()); err != nil {
		return Attachment{}, fmt.Errorf("address %v on %s: %w", Gateway, hostName, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return Attachment{}, fmt.Errorf("bring %s up: %w", hostName, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: host.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: s.ip.AsSlice(), HardwareAddr: ctrMAC,
	}); err != nil {
		return Attachment{}, fmt.Errorf("neighbour %v on %s: %w", s.ip, hostName, err)
	}
	if err := netlink.RouteReplace(ContainerRoute(host.Attrs().Index, s.ip, s.table)); err != nil {
		return Attachment{}, fmt.Errorf("route %v dev %s table %d: %w", s.ip, hostName, s.table, err)
	}
	return Attachment{
		HostVeth: hostName, HostMAC: host.Attrs().HardwareAddr,
		IfName: s.ifname, MAC: ctrMAC, IP: s.ip,
	}, nil
}

// GatewayAddr is the address of the cell end of every container's veth.
func GatewayAddr() *netlink.Addr {
	return &netlink.Addr{IPNet: hostNet(Gateway), Scope: unix.RT_SCOPE_LINK}
}

// ContainerRoute is a container's /32 in the delivery table, through the
// cell end of its veth (link: its index).
func ContainerRoute(link int, ip netip.Addr, table int) *netlink.Route {
	return &netlink.Route{LinkIndex: link, Dst: hostNet(ip), Scope: netlink.SCOPE_LINK, Table: table}
}

// sourceTableBase + the interface index is the routing table, inside a
// container, of an interface that is not its first one.
const sourceTableBase = 0x77650000 // "we"

// routeContainerSide routes the container's traffic via Gateway on the
// interface idx. The first interface of a namespace gets the main table's
// link route to Gateway and default route. A namespace may hold several
// (CNI attachments of one container on several interfaces): a later one
// gets the same two routes in a table of its own, chosen by a rule for its
// source address, so that what is sent from its address (replies to
// connections it accepted, sockets bound to it) leaves through it and its
// own veth, the only one the cell's guard accepts that address from.
func routeContainerSide(h *netlink.Handle, idx int, ip netip.Addr) error {
	table := unix.RT_TABLE_MAIN
	routes, err := h.RouteList(nil, unix.AF_INET)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			table = sourceTableBase + idx
		}
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: hostNet(Gateway), Scope: netlink.SCOPE_LINK, Table: table}); err != nil {
		return fmt.Errorf("route to gateway: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: Gateway.AsSlice(), Table: table}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	if table == unix.RT_TABLE_MAIN {
		return nil
	}
	rule := netlink.NewRule()
	rule.Src, rule.Table, rule.Priority = hostNet(ip), table, 100
	if err := h.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("rule from %v lookup %d: %w", ip, table, err)
	}
	return nil
}

// configureContainerSide sets up lo and the container end of the veth
// (renamed to ifname) inside the container and returns its MAC address.
func configureContainerSide(ns netns.NsHandle, peerName, ifname string, ip netip.Addr, mtu int, gwMAC net.HardwareAddr) (net.HardwareAddr, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return nil, err
	}
	if err := h.LinkSetUp(lo); err != nil {
		return nil, err
	}
	eth, err := h.LinkByName(peerName)
	if err != nil {
		return nil, err
	}
	if err := h.LinkSetName(eth, ifname); err != nil {
		return nil, fmt.Errorf("rename %s to %s: %w", peerName, ifname, err)
	}
	if err := h.LinkSetMTU(eth, mtu); err != nil {
		return nil, err
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: hostNet(ip)}); err != nil {
		return nil, fmt.Errorf("address %v: %w", ip, err)
	}
	// The overlay is IPv4: no IPv6 link-local address, so the interface
	// sends no router solicitations or neighbour discovery, which the
	// cell's guard would only drop (not_ipv4).
	if err := h.LinkSetIP6AddrGenMode(eth, nl.IN6_ADDR_GEN_MODE_NONE); err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
		return nil, fmt.Errorf("IPv6 address generation off on %s: %w", ifname, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return nil, err
	}
	idx := eth.Attrs().Index
	if err := routeContainerSide(h, idx, ip); err != nil {
		return nil, err
	}
	if err := h.NeighSet(&netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: Gateway.AsSlice(), HardwareAddr: gwMAC,
	}); err != nil {
		return nil, fmt.Errorf("gateway neighbour: %w", err)
	}
	eth, err = h.LinkByIndex(idx)
	if err != nil {
		return nil, err
	}
	return eth.Attrs().HardwareAddr, nil
}

// DetachContainer removes what [Container] made. Missing parts are not an
// error, so it can finish an interrupted attach or detach.
func DetachContainer(name string) error {
	errs := DetachNetns(name)
	if _, err := os.Stat(filepath.Join(NetnsDir, name)); err == nil {
		if err := netns.DeleteNamed(name); err != nil {
			errs = errors.Join(errs, fmt.Errorf("delete network namespace %s: %w", name, err))
		}
	}
	return errs
}

// DetachNetns deletes the cell end of container id's veth pair, which
// takes the container end, the neighbour entry and the delivery route with
// it (attachment id of [Netns]: its namespace is the runtime's and
// stays). A missing veth is not an error, so it can be repeated.
func DetachNetns(id string) error {
	link, err := netlink.LinkByName(HostVethName(id))
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	} else if err != nil {
		return fmt.Errorf("find veth %s: %w", HostVethName(id), err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete veth %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// newNamedNetns creates and bind-mounts a network namespace without moving
// the calling goroutine into it (netns.NewNamed leaves the thread there).
func newNamedNetns(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), err
	}
	defer orig.Close()
	ns, nerr := netns.NewNamed(name)
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the wrong namespace: keep it locked so
		// that the runtime throws it away when this goroutine exits.
		if nerr == nil {
			ns.Close()
		}
		return netns.None(), fmt.Errorf("restore network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ns, nerr
}

// hostNet is addr/32 (or /128).
func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}
