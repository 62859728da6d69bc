package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Path MTU (docs/architecture.md, "Path MTU"). The agent probes each peer
// through the tunnel, from this cell's address (CellAddr) to the peer's,
// with padded UDP datagrams to PMTUProbePort (cell/pmtu.go). The overlay's
// part:
//
//   - the wrapper lets those probes and their answers pass between cell
//     addresses without the policy engine (probeFilter, wrapper.go);
//   - SetPeerMTU gives the route to a peer's subnet the probed MTU, so the
//     kernel answers a forwarded DF packet that does not fit with ICMP
//     "fragmentation needed" and fragments the others;
//   - the guard clamps the MSS of forwarded TCP SYNs to the route's MTU
//     (mssClamp), so TCP never sends what does not fit in the first place.

// SetPeerMTU gives the route to a peer cell's subnet an MTU: mtu less than
// the overlay's adds (or changes) a route "SUBNET dev weft0 mtu MTU" in
// the main table, more specific than the overlay's; mtu 0 or the overlay's
// own removes it, so the peer's packets take the overlay route again. It
// is idempotent, so the caller may repeat it to repair a route someone
// removed.
func (o *Overlay) SetPeerMTU(subnet netip.Prefix, mtu int) error {
	if !subnet.IsValid() || !o.cfg.OverlayCIDR.Contains(subnet.Addr()) || subnet.Masked() == o.cfg.LocalSubnet.Masked() {
		return fmt.Errorf("path MTU route for %v: not a peer subnet of overlay %v", subnet, o.cfg.OverlayCIDR)
	}
	link, err := netlink.LinkByName(o.cfg.Interface)
	if err != nil {
		return fmt.Errorf("find %s: %w", o.cfg.Interface, err)
	}
	r := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       prefixToIPNet(subnet),
		Scope:     netlink.SCOPE_LINK,
	}
	if mtu <= 0 || mtu >= o.cfg.MTU {
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete route %v dev %s: %w", subnet, o.cfg.Interface, err)
		}
		return nil
	}
	r.MTU = mtu
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route %v dev %s mtu %d: %w", subnet, o.cfg.Interface, mtu, err)
	}
	return nil
}

// PeerRouteMTU returns the MTU of the route to subnet in the main table: 0
// when there is no route of its own (the overlay route's, the device MTU,
// applies).
func (o *Overlay) PeerRouteMTU(subnet netip.Prefix) (int, error) {
	routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: prefixToIPNet(subnet), Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, err
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == subnet.Masked().String() {
			return r.MTU, nil
		}
	}
	return 0, nil
}

// KernelPathMTU returns the path MTU the kernel learned for underlay
// address addr from ICMP "fragmentation needed" (its route cache), or 0
// when it has none. WireGuard's socket leaves IP_MTU_DISCOVER at the
// kernel's default, which sets DF on every datagram, so such an ICMP
// message is how a smaller underlay announces itself when it does.
func KernelPathMTU(addr netip.Addr) int {
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil {
		return 0
	}
	for _, r := range routes {
		if r.MTU > 0 {
			return r.MTU
		}
	}
	return 0
}

// ListenProbes opens the UDP socket of path MTU probes on this cell's
// address. Its datagrams leave with DF set whatever their size up to the
// device's MTU (IP_PMTUDISC_PROBE): a probe ignores both the route MTU
// that an earlier probe set and the kernel's learned path MTU, so it
// measures the path itself.
func (o *Overlay) ListenProbes() (*net.UDPConn, error) {
	addr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(CellAddr(o.cfg.LocalSubnet), PMTUProbePort))
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
	if err != nil {
		return nil, fmt.Errorf("path MTU probe socket %v: %w", addr, err)
	}
	return pc.(*net.UDPConn), nil
}

// mssClamp lowers the MSS option of every forwarded TCP SYN to what the
// routes in both directions carry (nftables "tcp flags syn tcp option
// maxseg size set rt mtu": the kernel only ever lowers it). Toward a peer
// whose route has the probed path MTU, both ends of a connection then send
// segments that fit, without waiting for ICMP.
func mssClamp() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
	}
}
