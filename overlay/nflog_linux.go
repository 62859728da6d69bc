package overlay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/policy"
)

// Egress verdicts are the kernel's (egress_linux.go), so the engine's flow
// log never sees them. The egress chain logs the first packet of each flow
// (ct state new), accepted or refused, to the NFLOG group EgressLogGroup,
// rate-limited in the kernel (egressLogRate a second); EgressLog reads
// that group over netfilter netlink and turns each record into an
// EgressRecord. The group belongs to the cell's network namespace.

// EgressLogGroup is the NFLOG group of the egress chain's log rules.
const EgressLogGroup = 0x5746

// egressLogRate bounds the records the kernel sends a second, as the
// engine's FlowLogRate bounds its flow log (burst the same).
const egressLogRate = 100

// egressLogSnap is how much of each packet the kernel copies: the IPv4
// header with options and the ports.
const egressLogSnap = 64

// EgressRecord is one logged egress packet: the first of a flow.
type EgressRecord struct {
	Accepted bool // an egress rule allowed it (else refused)
	Protocol policy.Protocol
	Src, Dst netip.AddrPort // ports 0 for icmp
}

// netfilter netlink (linux/netfilter/nfnetlink.h, nfnetlink_log.h).
const (
	nfnlSubsysULOG   = 4
	nfulnlMsgPacket  = 0
	nfulnlMsgConfig  = 1
	nfulaCfgCmd      = 1
	nfulaCfgMode     = 2
	nfulaCfgQThresh  = 5
	nfulnlCfgCmdBind = 1
	nfulnlCopyPacket = 2
	nfulaPayload     = 9
	nfulaPrefix      = 10
)

// Log prefixes of the egress chain's log rules: the verdict.
const (
	egressLogAccepted = GuardEgressAccepted
	egressLogRefused  = GuardEgress
)

// EgressLog binds the egress NFLOG group and calls fn for each record
// until stop is closed (or the socket fails). It returns once bound, with
// the reader running on its own goroutine; fn runs on that goroutine and
// should not block. Only one reader may bind the group in a namespace.
func EgressLog(fn func(EgressRecord), stop <-chan struct{}) error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("nflog: %w", err)
	}
	config := func(attrs func(*netlink.AttributeEncoder)) error {
		ae := netlink.NewAttributeEncoder()
		attrs(ae)
		b, err := ae.Encode()
		if err != nil {
			return err
		}
		hdr := []byte{unix.AF_UNSPEC, 0, 0, 0} // nfgenmsg: family, version, res_id (the group)
		binary.BigEndian.PutUint16(hdr[2:], EgressLogGroup)
		_, err = c.Execute(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysULOG<<8 | nfulnlMsgConfig),
				Flags: netlink.Request | netlink.Acknowledge},
			Data: append(hdr, b...),
		})
		return err
	}
	if err := config(func(ae *netlink.AttributeEncoder) { ae.Bytes(nfulaCfgCmd, []byte{nfulnlCfgCmdBind}) }); err != nil {
		c.Close()
		return fmt.Errorf("nflog: bind group %d: %w", EgressLogGroup, err)
	}
	err = config(func(ae *netlink.AttributeEncoder) {
		mode := make([]byte, 6) // copy_range (be32), copy_mode, pad
		binary.BigEndian.PutUint32(mode, egressLogSnap)
		mode[4] = nfulnlCopyPacket
		ae.Bytes(nfulaCfgMode, mode)
		ae.Bytes(nfulaCfgQThresh, binary.BigEndian.AppendUint32(nil, 1)) // each record at once
	})
	if err != nil {
		c.Close()
		return fmt.Errorf("nflog: configure group %d: %w", EgressLogGroup, err)
	}
	go func() {
		<-stop
		c.Close()
	}()
	go func() {
		for {
			msgs, err := c.Receive()
			if err != nil {
				var ne *netlink.OpError
				if errors.As(err, &ne) && errors.Is(ne.Err, unix.ENOBUFS) {
					continue // the kernel dropped records: go on with the next
				}
				return // closed
			}
			for _, m := range msgs {
				if r, ok := parseEgressLog(m); ok {
					fn(r)
				}
			}
		}
	}()
	return nil
}

// parseEgressLog reads an NFULNL_MSG_PACKET message of the egress chain.
func parseEgressLog(m netlink.Message) (EgressRecord, bool) {
	if m.Header.Type != netlink.HeaderType(nfnlSubsysULOG<<8|nfulnlMsgPacket) || len(m.Data) < 4 {
		return EgressRecord{}, false
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return EgressRecord{}, false
	}
	var prefix string
	var pkt []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			prefix = ad.String()
		case nfulaPayload:
			pkt = ad.Bytes()
		}
	}
	var r EgressRecord
	switch prefix {
	case egressLogAccepted:
		r.Accepted = true
	case egressLogRefused:
	default:
		return EgressRecord{}, false
	}
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return EgressRecord{}, false
	}
	ihl := int(pkt[0]&0xf) * 4
	r.Protocol = policy.Protocol(pkt[9])
	src, dst := netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
	var sport, dport uint16
	if (r.Protocol == policy.ProtoTCP || r.Protocol == policy.ProtoUDP) && len(pkt) >= ihl+4 {
		sport, dport = binary.BigEndian.Uint16(pkt[ihl:]), binary.BigEndian.Uint16(pkt[ihl+2:])
	}
	r.Src, r.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return r, true
}
