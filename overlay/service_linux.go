package overlay

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// AddServiceAddr puts addr/32 on the TUN device so that a service of the
// agent (its DNS server) can listen on it. Containers reach it through their
// gateway like any other address of the cell; it goes away with the device.
func (o *Overlay) AddServiceAddr(addr netip.Addr) error {
	link, err := netlink.LinkByName(o.cfg.Interface)
	if err != nil {
		return fmt.Errorf("find %s: %w", o.cfg.Interface, err)
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: hostNet(addr)}); err != nil {
		return fmt.Errorf("address %v on %s: %w", addr, o.cfg.Interface, err)
	}
	return nil
}
