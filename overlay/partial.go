package overlay

import (
	"net/netip"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// TCP checksums between weft cells.
//
// wireguard-go's TUN offload code sums every TCP segment it splits off a
// GSO packet on the sender and verifies every segment's sum again before
// coalescing on the receiver: 4% of the whole machine in rung d of the
// benchmark ladder, on the TUN reader's goroutine, which one stream's
// throughput waits on. Between two weft cells neither is needed: the
// WireGuard AEAD authenticates every byte. With Config.PartialTCPChecksums,
// weft's copy of wireguard-go (third_party/wireguard-go, WEFT-PATCHES.md)
// hands every TCP packet it writes to the TUN to the kernel as
// CHECKSUM_PARTIAL, which the kernel trusts (and completes, should the
// packet leave through a device that needs it), without verifying it; and
// it leaves the segments' checksums partial toward the destinations this
// file names. A cell announces that it accepts them
// (mesh.FeatPartialTCPChecksum) only then, and only when its TUN is
// wireguard-go's with offloads; an older cell, one started with
// --partial-tcp-checksums=false (which then verifies as upstream
// wireguard-go does) or one on the water backend announces nothing and
// gets full checksums.

// partialTCP is the set of destinations that accept partial TCP checksums:
// this cell's subnet (hair-pinned packets come back through its own TUN)
// and the AllowedIPs of the peers that announce it.
type partialTCP struct {
	on   bool                           // the TUN supports it and Config.PartialTCPChecksums is set
	dsts atomic.Pointer[[]netip.Prefix] // read on every GSO packet by the TUN reader
}

// initPartial turns partial checksums on for the TUN if the configuration
// asks for them and the TUN supports them.
func (o *Overlay) initPartial(tdev tun.Device) {
	if !o.cfg.PartialTCPChecksums {
		return
	}
	if !tun.SetPartialTCPChecksums(tdev, true, o.partial.accepts) {
		o.log.Info("TCP checksums stay full: the TUN has no offloads", "backend", o.backend)
		return
	}
	o.partial.on = true
	o.setPartialPeersLocked() // not yet shared: no peers, no lock needed
}

// AcceptsPartialTCPChecksum reports whether this cell's data plane accepts
// TCP packets with partial checksums from its peers, i.e. whether the cell
// may announce mesh.FeatPartialTCPChecksum.
func (o *Overlay) AcceptsPartialTCPChecksum() bool { return o.partial.on }

// setPartialPeersLocked recomputes the destinations from the configured
// peers, o.peers (o.mu held).
func (o *Overlay) setPartialPeersLocked() {
	if !o.partial.on {
		return
	}
	dsts := []netip.Prefix{o.cfg.LocalSubnet}
	for _, p := range o.peers {
		if p.PartialTCPChecksum {
			dsts = append(dsts, p.AllowedIPs...)
		}
	}
	o.partial.dsts.Store(&dsts)
}

// accepts reports whether the destination address dst (4 or 16 bytes, from
// a packet's IP header) is in the set.
func (p *partialTCP) accepts(dst []byte) bool {
	ds := p.dsts.Load()
	if ds == nil {
		return false
	}
	a, ok := netip.AddrFromSlice(dst)
	if !ok {
		return false
	}
	for _, d := range *ds {
		if d.Contains(a) {
			return true
		}
	}
	return false
}

// PartialTCPPeers returns the peers (by key) toward which TCP checksums
// are left partial, for status output.
func (o *Overlay) PartialTCPPeers() map[string]bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]bool, len(o.peers))
	for k, p := range o.peers {
		out[k.String()] = o.partial.on && p.PartialTCPChecksum
	}
	return out
}
