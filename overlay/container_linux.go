package overlay

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

// AttachContainer creates network namespace name (visible in `ip netns
// list`), a veth pair between it and the cell, gives the container ip/32 with
// a default route via Gateway, and adds ip/32 to the delivery table. On error
// nothing is left behind.
func (o *Overlay) AttachContainer(name string, ip netip.Addr) error {
	return attachContainer(name, ip, o.cfg.MTU, o.cfg.DeliveryTable)
}

// DetachContainer removes what AttachContainer made. Missing parts are not an
// error, so it can finish an interrupted attach or detach.
func (o *Overlay) DetachContainer(name string) error {
	return detachContainer(name)
}

func attachContainer(name string, ip netip.Addr, mtu, table int) (err error) {
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
			detachContainer(name)
		}
	}()

	hostName, peerName := HostVethName(name), peerVethName(name)
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostName, MTU: mtu},
		PeerName:  peerName,
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", hostName, err)
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return err
	}
	peer, err := netlink.LinkByName(peerName)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		return fmt.Errorf("move %s into %s: %w", peerName, name, err)
	}
	ctrMAC, err := configureContainerSide(ns, peerName, ip, mtu, host.Attrs().HardwareAddr)
	if err != nil {
		return fmt.Errorf("configure container %s: %w", name, err)
	}

	// Cell side: the gateway address, a static neighbour entry for the
	// container and its /32 in the delivery table.
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: hostNet(Gateway), Scope: unix.RT_SCOPE_LINK}); err != nil {
		return fmt.Errorf("address %v on %s: %w", Gateway, hostName, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bring %s up: %w", hostName, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: host.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: ip.AsSlice(), HardwareAddr: ctrMAC,
	}); err != nil {
		return fmt.Errorf("neighbour %v on %s: %w", ip, hostName, err)
	}
	if err := netlink.RouteReplace(&netlink.Route{
		LinkIndex: host.Attrs().Index, Dst: hostNet(ip), Scope: netlink.SCOPE_LINK, Table: table,
	}); err != nil {
		return fmt.Errorf("route %v dev %s table %d: %w", ip, hostName, table, err)
	}
	return nil
}

// configureContainerSide sets up lo and eth0 inside the container and
// returns eth0's MAC address.
func configureContainerSide(ns netns.NsHandle, peerName string, ip netip.Addr, mtu int, gwMAC net.HardwareAddr) (net.HardwareAddr, error) {
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
	if err := h.LinkSetName(eth, "eth0"); err != nil {
		return nil, err
	}
	if err := h.LinkSetMTU(eth, mtu); err != nil {
		return nil, err
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: hostNet(ip)}); err != nil {
		return nil, fmt.Errorf("address %v: %w", ip, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return nil, err
	}
	idx := eth.Attrs().Index
	if err := h.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: hostNet(Gateway), Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, fmt.Errorf("route to gateway: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: Gateway.AsSlice()}); err != nil {
		return nil, fmt.Errorf("default route: %w", err)
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

func detachContainer(name string) error {
	var errs error
	if link, err := netlink.LinkByName(HostVethName(name)); err == nil {
		if err := netlink.LinkDel(link); err != nil {
			errs = errors.Join(errs, fmt.Errorf("delete veth %s: %w", link.Attrs().Name, err))
		}
	}
	if _, err := os.Stat(filepath.Join(NetnsDir, name)); err == nil {
		if err := netns.DeleteNamed(name); err != nil {
			errs = errors.Join(errs, fmt.Errorf("delete network namespace %s: %w", name, err))
		}
	}
	return errs
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
