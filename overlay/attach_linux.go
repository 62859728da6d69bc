package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Attaching a network namespace that a container runtime made (the CNI
// plugin's case): the runtime owns the namespace and names the interface;
// the cell owns the veth pair, which is named after the container id like
// the ones of AttachContainer.

// ErrInterfaceExists is returned by AttachNetns when the namespace already
// has an interface of the requested name.
var ErrInterfaceExists = errors.New("interface already exists in the network namespace")

// Attachment describes the veth pair of an attached container.
type Attachment struct {
	HostVeth string           // cell end, HostVethName(id)
	HostMAC  net.HardwareAddr // MAC of the cell end
	IfName   string           // container end, inside the container's namespace
	MAC      net.HardwareAddr // MAC of the container end
	IP       netip.Addr       // the container's overlay address (/32)
}

var (
	attachmentID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$`)
	ifName       = regexp.MustCompile(`^[^/:\s]{1,15}$`)
)

// ValidAttachmentID reports whether id can name an attached container (a
// CNI container id: letters, digits, '.', '_' and '-', at most 253).
func ValidAttachmentID(id string) error {
	if !attachmentID.MatchString(id) {
		return fmt.Errorf("invalid container id %q: use 1-253 letters, digits, '.', '_' or '-', starting with a letter or digit", id)
	}
	return nil
}

// ValidIfName reports whether name can name a network interface.
func ValidIfName(name string) error {
	if !ifName.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("invalid interface name %q: 1-15 characters, no '/', ':' or spaces", name)
	}
	return nil
}

// AttachNetns connects the existing network namespace at nsPath (e.g.
// /proc/PID/ns/net or /run/netns/NAME) to the cell as AttachContainer does
// for a namespace it makes: a veth pair, the container end named ifname
// with ip/32 and a default route via Gateway, ip/32 in the delivery table.
// On error nothing is left behind; the namespace itself is never removed.
func (o *Overlay) AttachNetns(id, nsPath, ifname string, ip netip.Addr) (Attachment, error) {
	return attachNetns(id, nsPath, ifname, ip, o.cfg.MTU, o.cfg.DeliveryTable)
}

// DetachNetns removes the veth pair of container id (and with it its
// delivery route). The namespace is the runtime's and stays. A missing veth
// is not an error, so DEL can be repeated.
func (o *Overlay) DetachNetns(id string) error {
	return deleteHostVeth(id)
}

// CheckNetns verifies that container id is still attached as AttachNetns
// left it: the cell end of the veth is up, and inside nsPath ifname is up
// with ip/32 and a default route via Gateway.
func (o *Overlay) CheckNetns(id, nsPath, ifname string, ip netip.Addr) error {
	host, err := netlink.LinkByName(HostVethName(id))
	if err != nil {
		return fmt.Errorf("cell end of the veth %s: %w", HostVethName(id), err)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("cell end of the veth %s is down", HostVethName(id))
	}
	return withNetnsPath(nsPath, func(ns netns.NsHandle, h *netlink.Handle) error {
		link, err := h.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("interface %s in %s: %w", ifname, nsPath, err)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("interface %s in %s is down", ifname, nsPath)
		}
		addrs, err := h.AddrList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		found := false
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("interface %s in %s does not have %v", ifname, nsPath, ip)
		}
		routes, err := h.RouteList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && Gateway.Compare(mustAddr(r.Gw)) == 0 {
				return nil
			}
		}
		return fmt.Errorf("no default route via %v on %s in %s", Gateway, ifname, nsPath)
	})
}

func attachNetns(id, nsPath, ifname string, ip netip.Addr, mtu, table int) (att Attachment, err error) {
	if err := ValidAttachmentID(id); err != nil {
		return Attachment{}, err
	}
	if err := ValidIfName(ifname); err != nil {
		return Attachment{}, err
	}
	if _, err := netlink.LinkByName(HostVethName(id)); err == nil {
		return Attachment{}, fmt.Errorf("%w: container %s is attached already (veth %s)", ErrContainerExists, id, HostVethName(id))
	}
	err = withNetnsPath(nsPath, func(ns netns.NsHandle, h *netlink.Handle) error {
		if _, err := h.LinkByName(ifname); err == nil {
			return fmt.Errorf("%w: %s in %s", ErrInterfaceExists, ifname, nsPath)
		}
		defer func() {
			if err != nil {
				deleteHostVeth(id)
			}
		}()
		att, err = attachVeth(vethSpec{id: id, ns: ns, ifname: ifname, ip: ip, mtu: mtu, table: table})
		return err
	})
	return att, err
}

// withNetnsPath opens the namespace at path and a netlink handle in it.
func withNetnsPath(path string, fn func(netns.NsHandle, *netlink.Handle) error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	return fn(ns, h)
}

func mustAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
