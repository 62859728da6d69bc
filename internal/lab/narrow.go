package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NarrowPath puts a router between cell i and the underlay bridge whose
// links carry at most mtu bytes, while the cell's own link keeps its MTU,
// so that the cell cannot know it: the path to and from cell i is narrower
// than every cell assumes. The router (namespace "<run>-r<i>") forwards
// with proxy ARP, so no address changes; it sends no ICMP at all (its
// output is dropped), so a packet too large for the path vanishes without
// "fragmentation needed": an MTU black hole, the case path MTU discovery
// by probing exists for. GSO packets are checked segment by segment, as
// every router does; a bridge port's MTU would not stop them.
//
// It may be called while the agents run; neighbour caches on the
// underlay are flushed so that traffic finds the router at once.
func (l *Lab) NarrowPath(i, mtu int) error {
	if mtu < 576 || mtu > 1500 {
		return fmt.Errorf("lab: NarrowPath MTU %d: want 576..1500", mtu)
	}
	c, err := l.Cell(i)
	if err != nil {
		return err
	}
	router := l.Name(fmt.Sprintf("r%d", i))
	if err := newNamedNetns(router, true); err != nil {
		return err
	}
	rh, err := netns.GetFromName(router)
	if err != nil {
		return fmt.Errorf("lab: open netns %s: %w", router, err)
	}
	defer rh.Close()
	const toCell, toBridge = "tocell", "tobridge"
	newPort := fmt.Sprintf("%sn%d", l.Run, i)

	// The cell's bridge port moves into the router; a new veth joins the
	// router to the bridge.
	err = withHandle(l.Underlay, func(h *netlink.Handle) error {
		port, err := h.LinkByName(c.bridgeLink)
		if err != nil {
			return err
		}
		if err := h.LinkSetNsFd(port, int(rh)); err != nil {
			return fmt.Errorf("move %s into %s: %w", c.bridgeLink, router, err)
		}
		br, err := h.LinkByName(l.bridge)
		if err != nil {
			return err
		}
		if l.sameSideOf(i) {
			if br, err = h.LinkByName(l.bridge2()); err != nil {
				return err
			}
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: newPort, MasterIndex: br.Attrs().Index},
			PeerName:      toBridge,
			PeerNamespace: netlink.NsFd(rh),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s/%s: %w", newPort, toBridge, err)
		}
		return h.LinkSetUp(veth)
	})
	if err != nil {
		return err
	}
	err = withHandle(router, func(h *netlink.Handle) error {
		moved, err := h.LinkByName(c.bridgeLink)
		if err != nil {
			return err
		}
		if err := h.LinkSetName(moved, toCell); err != nil {
			return err
		}
		routes := map[string]netip.Prefix{
			toCell:   netip.PrefixFrom(c.UnderlayIP, 32),
			toBridge: netip.MustParsePrefix(UnderlayPrefix),
		}
		for name, dst := range routes {
			link, err := h.LinkByName(name)
			if err != nil {
				return err
			}
			if err := h.LinkSetMTU(link, mtu); err != nil {
				return fmt.Errorf("MTU %d on %s: %w", mtu, name, err)
			}
			if err := h.LinkSetUp(link); err != nil {
				return err
			}
			if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixToIPNet(dst), Scope: netlink.SCOPE_LINK}); err != nil {
				return fmt.Errorf("route %v dev %s: %w", dst, name, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = InNetns(router, func() error {
		for _, s := range []string{"all/rp_filter", "default/rp_filter", toCell + "/rp_filter", toBridge + "/rp_filter",
			toCell + "/proxy_arp", toBridge + "/proxy_arp"} {
			v := "1"
			if filepath.Base(s) == "rp_filter" {
				v = "0"
			}
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+s, []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("lab: sysctls of %s: %w", router, err)
	}
	if err := dropOutput(rh); err != nil {
		return fmt.Errorf("lab: %s: %w", router, err)
	}
	l.mu.Lock()
	c.bridgeLink = newPort
	l.mu.Unlock()
	for _, o := range l.cells() {
		if err := withHandle(o.Netns, func(h *netlink.Handle) error { return flushNeigh(h, o.cellLink) }); err != nil {
			return err
		}
	}
	l.cfg.Logf("lab: path to cell %d narrowed to MTU %d (router %s, no ICMP)", i, mtu, router)
	return nil
}

// sameSideOf reports whether cell i is on the second bridge (Partition).
func (l *Lab) sameSideOf(i int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.side[i]
}

// dropOutput drops every IPv4 packet the namespace itself sends: a router
// that forwards but never answers, not even with ICMP.
func dropOutput(ns netns.NsHandle) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "silent"})
	drop := nftables.ChainPolicyDrop
	c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: drop output: %w", err)
	}
	return nil
}

// flushNeigh deletes the IPv4 neighbour entries of link name.
func flushNeigh(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	neighs, err := h.NeighList(link.Attrs().Index, unix.AF_INET)
	if err != nil {
		return err
	}
	for i := range neighs {
		h.NeighDel(&neighs[i])
	}
	return nil
}
