package cell

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/policy"
)

// The kernel outlives state.json: a container's namespace, veth and
// delivery route stay while the agent is down, and its veth carries the
// app and container id (overlay.LabelAttachment). At start the agent
// registers the labelled containers its registry lacks, and it never hands
// out an address that is still routed to a veth.

// waitRecovered waits (up to 5 s) for the data plane, and with it the
// recovery, when the cell holds a lease: requests that read or remove
// local containers made right after a start then see the recovered ones.
// Without a lease there is nothing to wait for yet: it returns at once.
func (a *Agent) waitRecovered(ctx context.Context) {
	if a.mesh.Subnet().IsValid() {
		a.waitReady(ctx, 5*time.Second)
	}
}

// labelLocked labels container id's veth with its app. A label that does
// not fit (an app and id of more than about 240 bytes) is only a warning:
// the container works, but could not be recovered without state.json.
// Needs a.mu.
func (a *Agent) labelLocked(id, app string) error {
	err := a.ov.LabelAttachment(id, app)
	if errors.Is(err, attach.ErrLabelTooLong) {
		a.log.Warn("container attached without a label: it cannot be recovered if state.json is lost",
			"container", id, "app", app, "err", err)
		return nil
	}
	return err
}

// freeIPLocked is the lowest address of the subnet that no local container
// is registered with and that has no route in the delivery table. Needs
// a.mu and the data plane.
func (a *Agent) freeIPLocked(local []mesh.Endpoint) (netip.Addr, bool, error) {
	routed, err := a.ov.DeliveryAddrs()
	if err != nil {
		return netip.Addr{}, false, err
	}
	ip, ok := freeIP(a.mesh.Subnet(), local, routed)
	return ip, ok, nil
}

// recoverContainersLocked registers the containers found in the kernel
// that the registry lacks, or has under another app or id at their
// address (the kernel's label wins: it is what is attached). A container
// whose id is registered at another address is left alone (logged), and
// so is an address routed to something without a label: it stays
// reserved. Nothing registered is removed. Needs a.mu and the data plane.
func (a *Agent) recoverContainersLocked() {
	found, err := a.ov.FindAttachments()
	if err != nil {
		a.log.Error("find containers in the kernel", "err", err)
		return
	}
	byIP, byName := map[netip.Addr]mesh.Endpoint{}, map[string]mesh.Endpoint{}
	for _, e := range a.localContainers() {
		byIP[e.IP], byName[e.Name] = e, e
	}
	for _, f := range found {
		if f.Name == "" || !policy.ValidAppName(f.App) {
			if _, ok := byIP[f.IP]; !ok {
				a.log.Warn("address routed to a device without a weft label: not handed out, not registered",
					"ip", f.IP, "device", f.HostVeth)
			}
			continue
		}
		e, ok := byIP[f.IP]
		if ok && e.Name == f.Name && e.App == f.App {
			continue
		}
		if other, dup := byName[f.Name]; dup && other.IP != f.IP {
			a.log.Warn("container found in the kernel at another address than registered: left as registered",
				"container", f.Name, "kernel_ip", f.IP, "registered_ip", other.IP)
			continue
		}
		if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: f.IP, App: f.App, Name: f.Name}); err != nil {
			a.log.Error("register container found in the kernel", "container", f.Name, "ip", f.IP, "err", err)
			continue
		}
		if ok {
			a.log.Warn("registry corrected from the kernel", "container", f.Name, "app", f.App, "ip", f.IP,
				"was_container", e.Name, "was_app", e.App)
		} else {
			a.log.Info("container recovered from the kernel", "container", f.Name, "app", f.App, "ip", f.IP,
				"veth", f.HostVeth)
		}
		byIP[f.IP], byName[f.Name] = mesh.Endpoint{IP: f.IP, App: f.App, Name: f.Name}, mesh.Endpoint{IP: f.IP}
	}
}
