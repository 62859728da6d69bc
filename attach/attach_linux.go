package attach

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Attaching a network namespace that a container runtime made (the CNI
// plugin's case): the runtime owns the namespace and names the interface;
// the cell owns the veth pair. One container may have several interfaces,
// even on one network, so an attachment is named by all three, as the CNI
// spec keys it: AttachmentName "NETWORK/ID/IFNAME". Its host veth is named
// after that (HostVethName) as the ones of [Container] are after the
// container name, and so are its registry entry, its guard binding and its
// label.

// ErrInterfaceExists is returned by [Netns] when the namespace already
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
	// A CNI network name, as the spec allows it.
	networkName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
)

// maxAttachmentName is the longest name the registry takes (mesh: 253).
const maxAttachmentName = 253

// AttachmentName is the name of the attachment of interface ifname of
// container id on CNI network network: "NETWORK/ID/IFNAME". None of the
// three can hold a '/', so the name is unambiguous, and it can never be a
// CLI container's name (ValidContainerName) either.
func AttachmentName(network, id, ifname string) (string, error) {
	if !networkName.MatchString(network) {
		return "", fmt.Errorf("invalid network name %q: use letters, digits, '.', '_' or '-', starting with a letter or digit", network)
	}
	if err := ValidAttachmentID(id); err != nil {
		return "", err
	}
	if err := ValidIfName(ifname); err != nil {
		return "", err
	}
	name := network + "/" + id + "/" + ifname
	if len(name) > maxAttachmentName {
		return "", fmt.Errorf("network name, container id and interface name too long together (%d bytes, at most %d)", len(name), maxAttachmentName)
	}
	return name, nil
}

// ParseAttachmentName splits an AttachmentName; ok is false for any other
// name (a CLI container's, or a container attached by an agent older than
// the NETWORK/ID/IFNAME names, which used the bare container id).
func ParseAttachmentName(name string) (network, id, ifname string, ok bool) {
	network, rest, found := strings.Cut(name, "/")
	if !found {
		return "", "", "", false
	}
	id, ifname, found = strings.Cut(rest, "/")
	if !found {
		return "", "", "", false
	}
	if n, err := AttachmentName(network, id, ifname); err != nil || n != name {
		return "", "", "", false
	}
	return network, id, ifname, true
}

// validRegisteredName reports whether name can name a container's veth: a
// container name or id (ValidAttachmentID) or an AttachmentName.
func validRegisteredName(name string) error {
	if _, _, _, ok := ParseAttachmentName(name); ok {
		return nil
	}
	return ValidAttachmentID(name)
}

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

// CheckNetns verifies that attachment name is still as [Netns] left
// it: the cell end of the veth is up, and inside nsPath ifname is up with
// ip/32 and a default route via Gateway.
func CheckNetns(name, nsPath, ifname string, ip netip.Addr) error {
	host, err := netlink.LinkByName(HostVethName(name))
	if err != nil {
		return fmt.Errorf("cell end of the veth %s: %w", HostVethName(name), err)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("cell end of the veth %s is down", HostVethName(name))
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
		// The default route is in the main table or, for a later interface
		// of the namespace, in its own (routeContainerSide).
		for _, table := range []int{unix.RT_TABLE_MAIN, sourceTableBase + link.Attrs().Index} {
			routes, err := h.RouteListFiltered(unix.AF_INET,
				&netlink.Route{LinkIndex: link.Attrs().Index, Table: table}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && Gateway.Compare(mustAddr(r.Gw)) == 0 {
					return nil
				}
			}
		}
		return fmt.Errorf("no default route via %v on %s in %s", Gateway, ifname, nsPath)
	})
}

// Netns connects the existing network namespace at nsPath (e.g.
// /proc/PID/ns/net or /run/netns/NAME) to the cell as [Container] does
// for a namespace it makes: a veth pair named after name (an
// AttachmentName), the container end named ifname with ip/32 and a default
// route via Gateway, ip/32 in the delivery table. On error nothing is left
// behind; the namespace itself is never removed.
func Netns(cfg Config, name, nsPath, ifname string, ip netip.Addr) (att Attachment, err error) {
	if err := validRegisteredName(name); err != nil {
		return Attachment{}, err
	}
	if err := ValidIfName(ifname); err != nil {
		return Attachment{}, err
	}
	if _, err := netlink.LinkByName(HostVethName(name)); err == nil {
		return Attachment{}, fmt.Errorf("%w: %s is attached already (veth %s)", ErrContainerExists, name, HostVethName(name))
	}
	err = withNetnsPath(nsPath, func(ns netns.NsHandle, h *netlink.Handle) error {
		if _, err := h.LinkByName(ifname); err == nil {
			return fmt.Errorf("%w: %s in %s", ErrInterfaceExists, ifname, nsPath)
		}
		defer func() {
			if err != nil {
				DetachNetns(name)
			}
		}()
		att, err = attachVeth(vethSpec{id: name, ns: ns, ifname: ifname, ip: ip, mtu: cfg.MTU, table: cfg.DeliveryTable})
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
