package overlay

import (
	"net/netip"

	"github.com/weft-net/weft/attach"
)

// Container attachment is package attach's; these methods give it the
// overlay's MTU, delivery table and subnet, and tell drift repair when a
// container goes.

// attachConfig is how this overlay's containers are attached.
func (o *Overlay) attachConfig() attach.Config {
	return attach.Config{MTU: o.cfg.MTU, DeliveryTable: o.cfg.DeliveryTable, LocalSubnet: o.cfg.LocalSubnet}
}

// AttachContainer: [attach.Container] with the overlay's settings.
func (o *Overlay) AttachContainer(name string, ip netip.Addr) error {
	return attach.Container(o.attachConfig(), name, ip)
}

// DetachContainer: [attach.DetachContainer]; drift repair forgets the
// container first.
func (o *Overlay) DetachContainer(name string) error {
	o.drift.forgetContainer(name)
	return attach.DetachContainer(name)
}

// AttachNetns: [attach.Netns] with the overlay's settings.
func (o *Overlay) AttachNetns(name, nsPath, ifname string, ip netip.Addr) (attach.Attachment, error) {
	return attach.Netns(o.attachConfig(), name, nsPath, ifname, ip)
}

// DetachNetns: [attach.DetachNetns]; drift repair forgets the attachment
// first.
func (o *Overlay) DetachNetns(name string) error {
	o.drift.forgetContainer(name)
	return attach.DetachNetns(name)
}

// CheckNetns: [attach.CheckNetns].
func (o *Overlay) CheckNetns(name, nsPath, ifname string, ip netip.Addr) error {
	return attach.CheckNetns(name, nsPath, ifname, ip)
}

// LabelAttachment: [attach.Label].
func (o *Overlay) LabelAttachment(id, app string) error { return attach.Label(id, app) }

// DeliveryAddrs: [attach.DeliveryAddrs] in this overlay's delivery table
// and subnet.
func (o *Overlay) DeliveryAddrs() ([]netip.Addr, error) {
	return attach.DeliveryAddrs(o.attachConfig())
}

// FindAttachments: [attach.Find] in this overlay's delivery
// table and subnet.
func (o *Overlay) FindAttachments() ([]attach.Found, error) {
	return attach.Find(o.attachConfig())
}
