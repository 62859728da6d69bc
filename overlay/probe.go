package overlay

import (
	"encoding/binary"
	"net/netip"
)

// PMTUProbePort is the UDP port of path MTU probes on cell addresses.
const PMTUProbePort = 51819

// MinPathMTU is the smallest inner MTU probed: 576, the datagram every
// IPv4 host must accept. An underlay of 1280 bytes (IPv6's minimum)
// leaves 1220 inside WireGuard over IPv4, 1200 over IPv6.
const MinPathMTU = 576

// WireGuardOverhead is what WireGuard adds to an inner packet on the
// underlay: outer IP header, UDP header, WireGuard's 16-byte data header
// and 16-byte tag: 60 bytes over IPv4, 80 over IPv6.
func WireGuardOverhead(underlay netip.Addr) int {
	if underlay.Is4() || underlay.Is4In6() {
		return 20 + 8 + 32
	}
	return 40 + 8 + 32
}

// probeFilter recognises path MTU probes and their answers between cell
// addresses (pmtu_linux.go), which pass the wrapper without the policy
// engine: no container sends or receives them, and a cell address is no
// endpoint. It is set before the device starts and not changed after.
type probeFilter struct {
	addr uint32 // this cell's address (CellAddr), big-endian; 0: off
	mask uint32 // the network mask of a cell's subnet
}

func newProbeFilter(local netip.Prefix) probeFilter {
	if !local.Addr().Is4() {
		return probeFilter{}
	}
	a := CellAddr(local).As4()
	return probeFilter{addr: binary.BigEndian.Uint32(a[:]), mask: ^uint32(0) << (32 - local.Bits())}
}

// outbound reports whether pkt, read from the TUN, is a probe or an answer
// this cell sends: UDP from its own address to or from PMTUProbePort, to
// another cell's address. The first test, on the source address, is the
// only one an ordinary packet pays.
func (p *probeFilter) outbound(pkt []byte) bool {
	if p.addr == 0 || len(pkt) < 20 || binary.BigEndian.Uint32(pkt[12:16]) != p.addr {
		return false
	}
	dst := binary.BigEndian.Uint32(pkt[16:20])
	return dst&^p.mask == 1 && dst&p.mask != p.addr&p.mask && probeUDP(pkt)
}

// inbound reports whether pkt, decrypted from a peer, is a probe or an
// answer for this cell: UDP to its own address from another cell's
// address, to or from PMTUProbePort. WireGuard has checked that the
// source is inside the sending peer's subnet, and the peer's guard that
// no container sent it, so the source is that peer cell itself.
func (p *probeFilter) inbound(pkt []byte) bool {
	if p.addr == 0 || len(pkt) < 20 || binary.BigEndian.Uint32(pkt[16:20]) != p.addr {
		return false
	}
	src := binary.BigEndian.Uint32(pkt[12:16])
	return src&^p.mask == 1 && src&p.mask != p.addr&p.mask && probeUDP(pkt)
}

// probeUDP: an unfragmented IPv4 UDP datagram without options, from or to
// PMTUProbePort.
func probeUDP(pkt []byte) bool {
	if len(pkt) < 28 || pkt[0] != 0x45 || pkt[9] != 17 || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
		return false
	}
	return binary.BigEndian.Uint16(pkt[20:22]) == PMTUProbePort || binary.BigEndian.Uint16(pkt[22:24]) == PMTUProbePort
}
