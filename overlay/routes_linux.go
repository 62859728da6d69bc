package overlay

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The routing recipe (docs/architecture.md has the picture):
//
//	main table:      OVERLAY_CIDR dev weft0
//	rule PRIO:       iif weft0 lookup DELIVERY
//	rule PRIO+1:     iif lo to LOCAL_SUBNET lookup DELIVERY
//	DELIVERY table:  CONTAINER_IP/32 dev VETH scope link (one per container)
//
// Every packet between containers, local or remote, leaves its container
// into the cell, is routed into weft0 and so passes the agent; only packets
// coming out of weft0 (and the cell's own traffic to its containers) may use
// the delivery table.

func setupRouting(cfg Config) error {
	link, err := netlink.LinkByName(cfg.Interface)
	if err != nil {
		return fmt.Errorf("find %s: %w", cfg.Interface, err)
	}
	if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
		return fmt.Errorf("set MTU %d on %s: %w", cfg.MTU, cfg.Interface, err)
	}
	// The cell's own address: the first host of its subnet, on weft0. The
	// kernel's reverse-path check fails for every packet arriving on an
	// interface without an address (even in loose mode) whose source is
	// routed elsewhere, which is the case for rejects and hair-pinned
	// packets: their source is a local container.
	if err := netlink.AddrReplace(link, cellAddrOf(cfg)); err != nil {
		return fmt.Errorf("address %v on %s: %w", CellAddr(cfg.LocalSubnet), cfg.Interface, err)
	}
	sysctls := []struct {
		path, value string
		optional    bool // absent on some kernels: skipped
	}{
		{"ipv4/ip_forward", "1", false},
		// No reverse-path lookup for packets from the TUN (WireGuard's
		// allowed IPs have checked their sources): without it the
		// kernel makes a second FIB lookup per packet, as weft's ip
		// rules count as custom ones (docs/architecture.md). Rejects
		// for remote senders are written into the TUN with a local
		// container's source and routed back out of it: no redirects.
		{"ipv4/conf/" + cfg.Interface + "/rp_filter", "0", false},
		{"ipv4/conf/" + cfg.Interface + "/accept_local", "1", false},
		{"ipv4/conf/" + cfg.Interface + "/send_redirects", "0", false},
		{"ipv4/conf/" + cfg.Interface + "/accept_redirects", "0", false},
		// The overlay is IPv4. Without this the kernel sends router
		// solicitations and MLD reports out of weft0 as soon as it is
		// up, which the wrapper can only drop (and count as spoofed).
		{"ipv6/conf/" + cfg.Interface + "/disable_ipv6", "1", true},
	}
	for _, s := range sysctls {
		if err := writeSysctl(s.path, s.value); err != nil && !(s.optional && errors.Is(err, fs.ErrNotExist)) {
			return err
		}
	}
	// Up only now: with IPv6 still on, the kernel sends a router
	// solicitation or an MLD report into the TUN the moment it is up,
	// which the wrapper drops as spoofed.
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", cfg.Interface, err)
	}
	if err := netlink.RouteReplace(overlayRoute(cfg, link.Attrs().Index)); err != nil {
		return fmt.Errorf("route %v dev %s: %w", cfg.OverlayCIDR, cfg.Interface, err)
	}
	deleteRules(cfg) // stale rules of an earlier run
	for _, r := range rules(cfg) {
		if err := netlink.RuleAdd(r); err != nil {
			return fmt.Errorf("add rule %v: %w", r, err)
		}
	}
	return nil
}

// cellAddrOf is the address setupRouting gives weft0 (drift.go restores it).
func cellAddrOf(cfg Config) *netlink.Addr {
	return &netlink.Addr{IPNet: hostNet(CellAddr(cfg.LocalSubnet))}
}

// overlayRoute is the main table's route of the whole overlay into the TUN
// (link: its index). Drift repair (drift.go) restores this same route.
func overlayRoute(cfg Config, link int) *netlink.Route {
	return &netlink.Route{
		LinkIndex: link,
		Dst:       prefixToIPNet(cfg.OverlayCIDR),
		Scope:     netlink.SCOPE_LINK,
	}
}

// CellAddr is the cell's own overlay address: the first host of its subnet.
// Containers get addresses after it.
func CellAddr(subnet netip.Prefix) netip.Addr {
	return subnet.Masked().Addr().Next()
}

func teardownRouting(cfg Config) error {
	return deleteRules(cfg)
}

func rules(cfg Config) []*netlink.Rule {
	fromTun := netlink.NewRule()
	fromTun.Family = unix.AF_INET
	fromTun.Priority = cfg.RulePriority
	fromTun.IifName = cfg.Interface
	fromTun.Table = cfg.DeliveryTable

	fromHost := netlink.NewRule()
	fromHost.Family = unix.AF_INET
	fromHost.Priority = cfg.RulePriority + 1
	fromHost.IifName = "lo"
	fromHost.Dst = prefixToIPNet(cfg.LocalSubnet)
	fromHost.Table = cfg.DeliveryTable

	// Replies of containers' egress flows, after NAT (egress_linux.go).
	egressReply := netlink.NewRule()
	egressReply.Family = unix.AF_INET
	egressReply.Priority = cfg.RulePriority + 2
	egressReply.Mark = EgressReplyMark
	egressReply.Table = cfg.DeliveryTable
	return []*netlink.Rule{fromTun, fromHost, egressReply}
}

// deleteRules removes every IPv4 rule that points at the delivery table.
func deleteRules(cfg Config) error {
	list, err := netlink.RuleList(unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list rules: %w", err)
	}
	var errs error
	for i := range list {
		r := list[i]
		if r.Table != cfg.DeliveryTable {
			continue
		}
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = errors.Join(errs, fmt.Errorf("delete rule %v: %w", r, err))
		}
	}
	return errs
}

// writeSysctl writes /proc/sys/net/PATH. /proc/sys/net shows the network
// namespace of the process, which is the cell's.
func writeSysctl(path, value string) error {
	p := filepath.Join("/proc/sys/net", path)
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl net/%s=%s: %w", path, value, err)
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// hostNet is addr/32 (or /128).
func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}
