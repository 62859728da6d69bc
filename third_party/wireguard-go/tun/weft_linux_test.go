package tun

// Tests of weft's patch (WEFT-PATCHES.md): TCP checksums left partial by
// the sender and trusted by the receiver.

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// pseudoNoFold is the unfolded pseudo-header sum of a TCP packet pkt (no
// virtio header) whose IP header is iphLen bytes.
func pseudoNoFold(pkt []byte, iphLen int) uint64 {
	src, dst := pkt[ipv4SrcAddrOffset:ipv4SrcAddrOffset+4], pkt[ipv4SrcAddrOffset+4:ipv4SrcAddrOffset+8]
	if pkt[0]>>4 == 6 {
		src, dst = pkt[ipv6SrcAddrOffset:ipv6SrcAddrOffset+16], pkt[ipv6SrcAddrOffset+16:ipv6SrcAddrOffset+32]
	}
	return pseudoHeaderChecksumNoFold(unix.IPPROTO_TCP, src, dst, uint16(len(pkt)-iphLen))
}

// pseudoSum is the folded pseudo-header sum, what a CHECKSUM_PARTIAL
// packet carries in its checksum field.
func pseudoSum(pkt []byte, iphLen int) uint16 { return checksum(nil, pseudoNoFold(pkt, iphLen)) }

func TestWeftSplitLeavesTCPChecksumPartial(t *testing.T) {
	for _, c := range []struct {
		name   string
		hdr    virtioNetHdr
		pkt    func() []byte
		iphLen int
		dst    []byte
	}{
		{"tcp4", virtioNetHdr{flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: unix.VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 100, hdrLen: 40, csumStart: 20, csumOffset: 16},
			func() []byte { return tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck|header.TCPFlagPsh, 250, 1) }, 20, ip4PortB.Addr().AsSlice()},
		{"tcp6", virtioNetHdr{flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: unix.VIRTIO_NET_HDR_GSO_TCPV6, gsoSize: 100, hdrLen: 60, csumStart: 40, csumOffset: 16},
			func() []byte { return tcp6Packet(ip6PortA, ip6PortB, header.TCPFlagAck|header.TCPFlagPsh, 250, 1) }, 40, ip6PortB.Addr().AsSlice()},
	} {
		for _, elide := range []bool{false, true} {
			t.Run(c.name, func(t *testing.T) {
				in := c.pkt()
				c.hdr.encode(in)
				out := make([][]byte, conn.IdealBatchSize)
				sizes := make([]int, conn.IdealBatchSize)
				for i := range out {
					out[i] = make([]byte, 65535)
				}
				var asked []byte
				n, err := handleVirtioRead(in, out, sizes, offset, func(dst []byte) bool {
					asked = append([]byte(nil), dst...)
					return elide
				})
				if err != nil {
					t.Fatal(err)
				}
				if n != 3 {
					t.Fatalf("%d segments, want 3", n)
				}
				if string(asked) != string(c.dst) {
					t.Fatalf("asked about destination %v, want %v", asked, c.dst)
				}
				for i := 0; i < n; i++ {
					seg := out[i][offset : offset+sizes[i]]
					field := binary.BigEndian.Uint16(seg[c.iphLen+16:])
					full := checksum(seg[c.iphLen:], pseudoNoFold(seg, c.iphLen))
					if elide {
						if want := pseudoSum(seg, c.iphLen); field != want {
							t.Errorf("elide, segment %d: checksum field %#04x, want the pseudo-header sum %#04x", i, field, want)
						}
					} else if full != 0xffff {
						t.Errorf("segment %d: checksum does not verify (sum %#04x)", i, full)
					}
				}
			})
		}
	}
}

func TestWeftMarkTCPPartial(t *testing.T) {
	frag := tcp4PacketMutateIPFields(ip4PortA, ip4PortB, header.TCPFlagAck, 100, 1, func(f *header.IPv4Fields) { f.Flags = 1 })
	for _, c := range []struct {
		name    string
		pkt     []byte
		partial bool
		iphLen  int
	}{
		{"tcp4", tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck, 100, 1), true, 20},
		{"tcp4 FIN", tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck|header.TCPFlagFin, 100, 1), true, 20},
		{"tcp6", tcp6Packet(ip6PortA, ip6PortB, header.TCPFlagAck, 100, 1), true, 40},
		{"udp4", udp4Packet(ip4PortA, ip4PortB, 100), false, 20},
		{"tcp4 fragment", frag, false, 20},
		{"tcp4 truncated", tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck, 100, 1)[:offset+30], false, 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			for i := range virtioNetHdrLen {
				c.pkt[offset-virtioNetHdrLen+i] = 0xAB
			}
			markTCPPartial(c.pkt, offset)
			var hdr virtioNetHdr
			if err := hdr.decode(c.pkt[offset-virtioNetHdrLen:]); err != nil {
				t.Fatal(err)
			}
			pkt := c.pkt[offset:]
			if !c.partial {
				if hdr != (virtioNetHdr{}) {
					t.Fatalf("header %+v, want zero", hdr)
				}
				return
			}
			want := virtioNetHdr{flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: uint16(c.iphLen), csumOffset: 16}
			if hdr != want {
				t.Fatalf("header %+v, want %+v", hdr, want)
			}
			if got, want := binary.BigEndian.Uint16(pkt[c.iphLen+16:]), pseudoSum(pkt, c.iphLen); got != want {
				t.Fatalf("checksum field %#04x, want the pseudo-header sum %#04x", got, want)
			}
		})
	}
}

// Trusting TCP checksums, a lone TCP packet goes out with NEEDS_CSUM
// through handleGRO too, also when its flags keep it from coalescing.
func TestWeftGROLoneTCP(t *testing.T) {
	pkts := [][]byte{
		tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck|header.TCPFlagFin, 100, 1),
		udp4Packet(ip4PortA, ip4PortB, 100),
	}
	toWrite := make([]int, 0, len(pkts))
	table := newTCPGROTable()
	table.trustTCP = true
	if err := handleGRO(pkts, offset, table, newUDPGROTable(), false, &toWrite); err != nil {
		t.Fatal(err)
	}
	if len(toWrite) != 2 {
		t.Fatalf("toWrite %v", toWrite)
	}
	var h0, h1 virtioNetHdr
	h0.decode(pkts[0][offset-virtioNetHdrLen:])
	h1.decode(pkts[1][offset-virtioNetHdrLen:])
	if h0.flags != unix.VIRTIO_NET_HDR_F_NEEDS_CSUM || h0.csumStart != 20 {
		t.Errorf("TCP FIN header %+v, want NEEDS_CSUM from 20", h0)
	}
	if h1 != (virtioNetHdr{}) {
		t.Errorf("UDP header %+v, want zero", h1)
	}
}

// Trusting TCP checksums, a TCP packet with a bad checksum coalesces with
// the others (upstream's behaviour, a zero virtio header and no
// coalescing, is what Test_handleGRO_invalidItemCsumClearsVirtioNetHdr
// checks without trust).
func TestWeftGROTrustsTCPChecksum(t *testing.T) {
	pkts := [][]byte{
		flipTCP4Checksum(tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck, 100, 1)),
		tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck, 100, 101),
		tcp4Packet(ip4PortA, ip4PortB, header.TCPFlagAck, 100, 201),
	}
	table := newTCPGROTable()
	table.trustTCP = true
	toWrite := make([]int, 0, len(pkts))
	if err := handleGRO(pkts, offset, table, newUDPGROTable(), false, &toWrite); err != nil {
		t.Fatal(err)
	}
	if len(toWrite) != 1 || toWrite[0] != 0 {
		t.Fatalf("toWrite = %v, want [0]", toWrite)
	}
	var hdr virtioNetHdr
	if err := hdr.decode(pkts[0][offset-virtioNetHdrLen:]); err != nil {
		t.Fatal(err)
	}
	if hdr.flags != unix.VIRTIO_NET_HDR_F_NEEDS_CSUM || hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_TCPV4 || hdr.gsoSize != 100 || hdr.csumStart != 20 || hdr.csumOffset != 16 {
		t.Fatalf("virtio header %+v", hdr)
	}
	if n := len(pkts[0]) - offset; n != 340 {
		t.Fatalf("coalesced packet is %d bytes, want 340", n)
	}
}
