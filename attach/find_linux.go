package attach

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Finding a cell's containers in the kernel, for an agent that lost its
// registry (state.json removed or stale): every attached container has a
// /32 route in the delivery table through the cell end of its veth,
// HostVethName(id), and that veth carries a label, its alias
// "weft:app=APP,name=ID", so that the app and container id survive in the
// kernel as long as the container does.

// labelPrefix starts the alias of every host veth weft labelled.
const labelPrefix = "weft:app="

// maxAliasLen is the longest interface alias the kernel keeps (IFALIASZ-1).
const maxAliasLen = 255

// ErrLabelTooLong is returned by [Label] when the app and container
// id do not fit in an interface alias.
var ErrLabelTooLong = errors.New("app and container id too long for the veth label")

// Found is a container attachment found in the kernel.
type Found struct {
	IP       netip.Addr // its /32 in the delivery table
	HostVeth string     // the route's device
	// App and Name (the container id) from the veth's label; both empty
	// when the device is not a weft host veth with a valid label.
	App, Name string
}

// Label records app and container id on the cell end of id's
// veth (its interface alias), where [Find] reads them back.
func Label(id, app string) error {
	label := labelPrefix + app + ",name=" + id
	if len(label) > maxAliasLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrLabelTooLong, len(label), maxAliasLen)
	}
	link, err := netlink.LinkByName(HostVethName(id))
	if err != nil {
		return fmt.Errorf("find veth %s: %w", HostVethName(id), err)
	}
	if err := netlink.LinkSetAlias(link, label); err != nil {
		return fmt.Errorf("label veth %s: %w", HostVethName(id), err)
	}
	return nil
}

// parseLabel returns the app and container id of a veth label, ok false
// when alias is not one or does not belong to the veth named hostVeth.
func parseLabel(alias, hostVeth string) (app, id string, ok bool) {
	rest, found := strings.CutPrefix(alias, labelPrefix)
	if !found {
		return "", "", false
	}
	app, id, found = strings.Cut(rest, ",name=")
	if !found || app == "" || validRegisteredName(id) != nil || HostVethName(id) != hostVeth {
		return "", "", false
	}
	return app, id, true
}

// DeliveryAddrs returns the addresses of the local subnet that have a /32
// route in the delivery table: they belong to attached containers (or to
// something else an operator routed there) and must not be handed out.
func DeliveryAddrs(cfg Config) ([]netip.Addr, error) {
	routes, err := deliveryRoutes(cfg)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(routes))
	for _, r := range routes {
		out = append(out, r.ip)
	}
	return out, nil
}

// Find returns the addresses of the local subnet routed in the
// delivery table, each with its device and, for a labelled weft veth, the
// app and container id of its label.
func Find(cfg Config) ([]Found, error) {
	routes, err := deliveryRoutes(cfg)
	if err != nil {
		return nil, err
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	byIndex := make(map[int]netlink.Link, len(links))
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	out := make([]Found, 0, len(routes))
	for _, r := range routes {
		f := Found{IP: r.ip}
		if l, ok := byIndex[r.link]; ok {
			f.HostVeth = l.Attrs().Name
			if l.Type() == "veth" {
				f.App, f.Name, _ = parseLabel(l.Attrs().Alias, f.HostVeth)
			}
		}
		out = append(out, f)
	}
	return out, nil
}

type deliveryRoute struct {
	ip   netip.Addr
	link int
}

// deliveryRoutes lists the /32 routes of the delivery table inside the
// local subnet.
func deliveryRoutes(cfg Config) ([]deliveryRoute, error) {
	routes, err := netlink.RouteListFiltered(unix.AF_INET,
		&netlink.Route{Table: cfg.DeliveryTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of table %d: %w", cfg.DeliveryTable, err)
	}
	var out []deliveryRoute
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, bits := r.Dst.Mask.Size()
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok || ones != bits || !cfg.LocalSubnet.Contains(ip.Unmap()) {
			continue
		}
		out = append(out, deliveryRoute{ip: ip.Unmap(), link: r.LinkIndex})
	}
	return out, nil
}
