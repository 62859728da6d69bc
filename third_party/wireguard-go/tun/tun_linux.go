/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package tun

/* Implementation of the TUN device interface for linux
 */

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/rwcancel"
)

const (
	cloneDevicePath = "/dev/net/tun"
	ifReqSize       = unix.IFNAMSIZ + 64
)

type NativeTun struct {
	elideTCPChecksum        atomic.Pointer[func(dst []byte) bool] // weft: see SetPartialTCPChecksums
	trustTCP                atomic.Bool                           // weft: see SetPartialTCPChecksums
	tunFile                 *os.File
	index                   int32      // if index
	errors                  chan error // async error handling
	events                  chan Event // device related events
	netlinkSock             int
	netlinkCancel           *rwcancel.RWCancel
	hackListenerClosed      sync.Mutex
	statusListenersShutdown chan struct{}
	batchSize               int
	vnetHdr                 bool
	udpGSO                  bool

	closeOnce sync.Once

	nameOnce  sync.Once // guards calling initNameCache, which sets following fields
	nameCache string    // name of interface
	nameErr   error

	readOpMu sync.Mutex                    // readOpMu guards readBuff, pending
	readBuff [virtioNetHdrLen + 65535]byte // if vnetHdr every read() is prefixed by virtioNetHdr
	drain    atomic.Bool                   // weft: see readDrain
	pending  int                           // weft: bytes of a packet left in readBuff by readDrain

	rc syscall.RawConn // weft: tunFile's, for readDrain and writeRaw; set at creation

	multiQueue bool       // weft: IFF_MULTI_QUEUE (CreateMultiQueueTUN, NewQueue)
	queueOf    *NativeTun // weft: the first queue, for a queue made by NewQueue

	// weft: readDrain's and writeRaw's state and their RawConn callbacks,
	// made once (a closure passed to RawConn escapes: an allocation per
	// call); guarded by readOpMu and writeOpMu.
	rd      drainState
	readFn  func(fd uintptr) bool
	wr      writeState
	writeFn func(fd uintptr) bool

	writeOpMu   sync.Mutex  // writeOpMu guards toWrite, tcpGROTable
	rawWrites   atomic.Bool // weft: set with the read drain (SetReadDrain)
	toWrite     []int
	tcpGROTable *tcpGROTable
	udpGROTable *udpGROTable
}

func (tun *NativeTun) File() *os.File {
	return tun.tunFile
}

func (tun *NativeTun) routineHackListener() {
	defer tun.hackListenerClosed.Unlock()
	/* This is needed for the detection to work across network namespaces
	 * If you are reading this and know a better method, please get in touch.
	 */
	last := 0
	const (
		up   = 1
		down = 2
	)
	for {
		sysconn, err := tun.tunFile.SyscallConn()
		if err != nil {
			return
		}
		err2 := sysconn.Control(func(fd uintptr) {
			_, err = unix.Write(int(fd), nil)
		})
		if err2 != nil {
			return
		}
		switch err {
		case unix.EINVAL:
			if last != up {
				// If the tunnel is up, it reports that write() is
				// allowed but we provided invalid data.
				tun.events <- EventUp
				last = up
			}
		case unix.EIO:
			if last != down {
				// If the tunnel is down, it reports that no I/O
				// is possible, without checking our provided data.
				tun.events <- EventDown
				last = down
			}
		default:
			return
		}
		select {
		case <-time.After(time.Second):
			// nothing
		case <-tun.statusListenersShutdown:
			return
		}
	}
}

func createNetlinkSocket() (int, error) {
	sock, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return -1, err
	}
	saddr := &unix.SockaddrNetlink{
		Family: unix.AF_NETLINK,
		Groups: unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR,
	}
	err = unix.Bind(sock, saddr)
	if err != nil {
		return -1, err
	}
	return sock, nil
}

func (tun *NativeTun) routineNetlinkListener() {
	defer func() {
		unix.Close(tun.netlinkSock)
		tun.hackListenerClosed.Lock()
		close(tun.events)
		tun.netlinkCancel.Close()
	}()

	for msg := make([]byte, 1<<16); ; {
		var err error
		var msgn int
		for {
			msgn, _, _, _, err = unix.Recvmsg(tun.netlinkSock, msg[:], nil, 0)
			if err == nil || !rwcancel.RetryAfterError(err) {
				break
			}
			if !tun.netlinkCancel.ReadyRead() {
				tun.errors <- fmt.Errorf("netlink socket closed: %w", err)
				return
			}
		}
		if err != nil {
			tun.errors <- fmt.Errorf("failed to receive netlink message: %w", err)
			return
		}

		select {
		case <-tun.statusListenersShutdown:
			return
		default:
		}

		wasEverUp := false
		for remain := msg[:msgn]; len(remain) >= unix.SizeofNlMsghdr; {

			hdr := *(*unix.NlMsghdr)(unsafe.Pointer(&remain[0]))

			if int(hdr.Len) > len(remain) {
				break
			}

			switch hdr.Type {
			case unix.NLMSG_DONE:
				remain = []byte{}

			case unix.RTM_NEWLINK:
				info := *(*unix.IfInfomsg)(unsafe.Pointer(&remain[unix.SizeofNlMsghdr]))
				remain = remain[hdr.Len:]

				if info.Index != tun.index {
					// not our interface
					continue
				}

				if info.Flags&unix.IFF_RUNNING != 0 {
					tun.events <- EventUp
					wasEverUp = true
				}

				if info.Flags&unix.IFF_RUNNING == 0 {
					// Don't emit EventDown before we've ever emitted EventUp.
					// This avoids a startup race with HackListener, which
					// might detect Up before we have finished reporting Down.
					if wasEverUp {
						tun.events <- EventDown
					}
				}

				tun.events <- EventMTUUpdate

			default:
				remain = remain[hdr.Len:]
			}
		}
	}
}

func getIFIndex(name string) (int32, error) {
	fd, err := unix.Socket(
		unix.AF_INET,
		unix.SOCK_DGRAM|unix.SOCK_CLOEXEC,
		0,
	)
	if err != nil {
		return 0, err
	}

	defer unix.Close(fd)

	var ifr [ifReqSize]byte
	copy(ifr[:], name)
	_, _, errno := unix.Syscall(
		unix.SYS_IOCTL,
		uintptr(fd),
		uintptr(unix.SIOCGIFINDEX),
		uintptr(unsafe.Pointer(&ifr[0])),
	)

	if errno != 0 {
		return 0, errno
	}

	return *(*int32)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])), nil
}

func (tun *NativeTun) setMTU(n int) error {
	name, err := tun.Name()
	if err != nil {
		return err
	}

	// open datagram socket
	fd, err := unix.Socket(
		unix.AF_INET,
		unix.SOCK_DGRAM|unix.SOCK_CLOEXEC,
		0,
	)
	if err != nil {
		return err
	}

	defer unix.Close(fd)

	// do ioctl call
	var ifr [ifReqSize]byte
	copy(ifr[:], name)
	*(*uint32)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])) = uint32(n)
	_, _, errno := unix.Syscall(
		unix.SYS_IOCTL,
		uintptr(fd),
		uintptr(unix.SIOCSIFMTU),
		uintptr(unsafe.Pointer(&ifr[0])),
	)

	if errno != 0 {
		return fmt.Errorf("failed to set MTU of TUN device: %w", errno)
	}

	return nil
}

func (tun *NativeTun) MTU() (int, error) {
	name, err := tun.Name()
	if err != nil {
		return 0, err
	}

	// open datagram socket
	fd, err := unix.Socket(
		unix.AF_INET,
		unix.SOCK_DGRAM|unix.SOCK_CLOEXEC,
		0,
	)
	if err != nil {
		return 0, err
	}

	defer unix.Close(fd)

	// do ioctl call

	var ifr [ifReqSize]byte
	copy(ifr[:], name)
	_, _, errno := unix.Syscall(
		unix.SYS_IOCTL,
		uintptr(fd),
		uintptr(unix.SIOCGIFMTU),
		uintptr(unsafe.Pointer(&ifr[0])),
	)
	if errno != 0 {
		return 0, fmt.Errorf("failed to get MTU of TUN device: %w", errno)
	}

	return int(*(*int32)(unsafe.Pointer(&ifr[unix.IFNAMSIZ]))), nil
}

func (tun *NativeTun) Name() (string, error) {
	tun.nameOnce.Do(tun.initNameCache)
	return tun.nameCache, tun.nameErr
}

func (tun *NativeTun) initNameCache() {
	tun.nameCache, tun.nameErr = tun.nameSlow()
}

func (tun *NativeTun) nameSlow() (string, error) {
	sysconn, err := tun.tunFile.SyscallConn()
	if err != nil {
		return "", err
	}
	var ifr [ifReqSize]byte
	var errno syscall.Errno
	err = sysconn.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(
			unix.SYS_IOCTL,
			fd,
			uintptr(unix.TUNGETIFF),
			uintptr(unsafe.Pointer(&ifr[0])),
		)
	})
	if err != nil {
		return "", fmt.Errorf("failed to get name of TUN device: %w", err)
	}
	if errno != 0 {
		return "", fmt.Errorf("failed to get name of TUN device: %w", errno)
	}
	return unix.ByteSliceToString(ifr[:]), nil
}

func (tun *NativeTun) Write(bufs [][]byte, offset int) (int, error) {
	tun.writeOpMu.Lock()
	defer func() {
		tun.tcpGROTable.reset()
		tun.udpGROTable.reset()
		tun.writeOpMu.Unlock()
	}()
	var (
		errs  error
		total int
	)
	tun.toWrite = tun.toWrite[:0]
	if tun.vnetHdr {
		tun.tcpGROTable.trustTCP = tun.first().trustTCP.Load()
		err := handleGRO(bufs, offset, tun.tcpGROTable, tun.udpGROTable, tun.udpGSO, &tun.toWrite)
		if err != nil {
			return 0, err
		}
		offset -= virtioNetHdrLen
	} else {
		for i := range bufs {
			tun.toWrite = append(tun.toWrite, i)
		}
	}
	if tun.first().rawWrites.Load() {
		return tun.writeRaw(bufs, offset)
	}
	for _, bufsI := range tun.toWrite {
		n, err := tun.tunFile.Write(bufs[bufsI][offset:])
		if errors.Is(err, syscall.EBADFD) {
			return total, os.ErrClosed
		}
		if err != nil {
			errs = errors.Join(errs, err)
		} else {
			total += n
		}
	}
	return total, errs
}

// rawRead and rawWrite are read(2) and write(2) on the TUN's non-blocking
// descriptor without entersyscall/exitsyscall (weft). Neither can block
// (EAGAIN instead), so the goroutine keeps its P through the call; the
// runtime's syscall path instead wakes sysmon on entry when it sleeps and
// may hand the P to another thread, which on weft's cells (one TUN read or
// write per small packet) cost several per cent of the whole machine:
// docs/performance.md.
func rawRead(fd uintptr, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawWrite(fd uintptr, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// writeRaw writes tun.toWrite's packets with rawWrite in one hold of the
// descriptor (weft, with SetReadDrain). A full queue (EAGAIN, which a TUN
// does not return today) waits in the runtime's poller as os.File.Write
// would.
func (tun *NativeTun) writeRaw(bufs [][]byte, offset int) (int, error) {
	w := &tun.wr
	*w = writeState{bufs: bufs, offset: offset}
	defer func() { tun.wr = writeState{} }()
	err := tun.rc.Write(tun.writeFn)
	total, errs := w.total, w.errs
	if err != nil || errors.Is(errs, syscall.EBADFD) || errors.Is(errs, unix.EBADF) {
		return total, os.ErrClosed
	}
	return total, errs
}

// writeState is one writeRaw call's arguments and progress.
type writeState struct {
	bufs   [][]byte
	offset int
	errs   error
	total  int
	next   int // index into tun.toWrite
}

// writeFD is writeRaw's RawConn.Write callback (tun.writeFn).
func (tun *NativeTun) writeFD(fd uintptr) bool {
	w := &tun.wr
	for w.next < len(tun.toWrite) {
		n, err := rawWrite(fd, w.bufs[tun.toWrite[w.next]][w.offset:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			w.errs = errors.Join(w.errs, &os.PathError{Op: "write", Path: tun.tunFile.Name(), Err: err})
		default:
			w.total += n
		}
		w.next++
	}
	return true
}

// SetPartialTCPChecksums sets what dev, if it is a NativeTun with
// offloads, does with TCP checksums (weft):
//
//   - trust: Write verifies no TCP checksum and hands every TCP packet to the
//     kernel as CHECKSUM_PARTIAL, which trusts it (and completes it should
//     the packet leave through a device that needs it). For packets that a
//     WireGuard peer sent: the AEAD has authenticated every byte.
//   - elide, if not nil: Read leaves the checksum of each TCP segment it
//     splits off a GSO packet partial (the pseudo-header sum only) when
//     elide(dst) says that the peer for the destination address dst (4 or
//     16 bytes) trusts them.
//
// It reports whether dev supports it.
func SetPartialTCPChecksums(dev Device, trust bool, elide func(dst []byte) bool) bool {
	t, ok := dev.(*NativeTun)
	if !ok || !t.vnetHdr {
		return false
	}
	t.trustTCP.Store(trust)
	if elide == nil {
		t.elideTCPChecksum.Store(nil)
	} else {
		t.elideTCPChecksum.Store(&elide)
	}
	return true
}

// SetReadDrain turns weft's read drain on or off (readDrain): with it,
// Read returns every packet the kernel has queued, up to len(bufs), not
// one read(2)'s worth, and Write writes a batch in one hold of the
// descriptor (writeRaw); both without the runtime's syscall entry and exit
// (rawRead, rawWrite). It reports whether dev supports it (a *NativeTun
// with offloads, whose batch size is above 1).
func SetReadDrain(dev Device, on bool) bool {
	t, ok := dev.(*NativeTun)
	if !ok || !t.vnetHdr {
		return false
	}
	t.drain.Store(on)
	t.rawWrites.Store(on)
	return true
}

// handleVirtioRead splits in into bufs, leaving offset bytes at the front of
// each buffer. It mutates sizes to reflect the size of each element of bufs,
// and returns the number of packets read.
//
// weft: elide, if set, says whether the peer that will receive the packets
// of in (given its destination address) accepts TCP segments whose
// checksum field holds only the pseudo-header sum; gsoSplit then skips
// summing each segment.
func handleVirtioRead(in []byte, bufs [][]byte, sizes []int, offset int, elide func(dst []byte) bool) (int, error) {
	var hdr virtioNetHdr
	err := hdr.decode(in)
	if err != nil {
		return 0, err
	}
	in = in[virtioNetHdrLen:]
	if hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_NONE {
		if hdr.flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
			// This means CHECKSUM_PARTIAL in skb context. We are responsible
			// for computing the checksum starting at hdr.csumStart and placing
			// at hdr.csumOffset.
			err = gsoNoneChecksum(in, hdr.csumStart, hdr.csumOffset)
			if err != nil {
				return 0, err
			}
		}
		if len(in) > len(bufs[0][offset:]) {
			return 0, fmt.Errorf("read len %d overflows bufs element len %d", len(in), len(bufs[0][offset:]))
		}
		n := copy(bufs[0][offset:], in)
		sizes[0] = n
		return 1, nil
	}
	if hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_TCPV4 && hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_TCPV6 && hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_UDP_L4 {
		return 0, fmt.Errorf("unsupported virtio GSO type: %d", hdr.gsoType)
	}

	ipVersion := in[0] >> 4
	switch ipVersion {
	case 4:
		if hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_TCPV4 && hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_UDP_L4 {
			return 0, fmt.Errorf("ip header version: %d, GSO type: %d", ipVersion, hdr.gsoType)
		}
	case 6:
		if hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_TCPV6 && hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_UDP_L4 {
			return 0, fmt.Errorf("ip header version: %d, GSO type: %d", ipVersion, hdr.gsoType)
		}
	default:
		return 0, fmt.Errorf("invalid ip header version: %d", ipVersion)
	}

	// Don't trust hdr.hdrLen from the kernel as it can be equal to the length
	// of the entire first packet when the kernel is handling it as part of a
	// FORWARD path. Instead, parse the transport header length and add it onto
	// csumStart, which is synonymous for IP header length.
	if hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_UDP_L4 {
		hdr.hdrLen = hdr.csumStart + 8
	} else {
		if len(in) <= int(hdr.csumStart+12) {
			return 0, errors.New("packet is too short")
		}

		tcpHLen := uint16(in[hdr.csumStart+12] >> 4 * 4)
		if tcpHLen < 20 || tcpHLen > 60 {
			// A TCP header must be between 20 and 60 bytes in length.
			return 0, fmt.Errorf("tcp header len is invalid: %d", tcpHLen)
		}
		hdr.hdrLen = hdr.csumStart + tcpHLen
	}

	if len(in) < int(hdr.hdrLen) {
		return 0, fmt.Errorf("length of packet (%d) < virtioNetHdr.hdrLen (%d)", len(in), hdr.hdrLen)
	}

	if hdr.hdrLen < hdr.csumStart {
		return 0, fmt.Errorf("virtioNetHdr.hdrLen (%d) < virtioNetHdr.csumStart (%d)", hdr.hdrLen, hdr.csumStart)
	}
	cSumAt := int(hdr.csumStart + hdr.csumOffset)
	if cSumAt+1 >= len(in) {
		return 0, fmt.Errorf("end of checksum offset (%d) exceeds packet length (%d)", cSumAt+1, len(in))
	}

	partial := false
	if elide != nil && hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_UDP_L4 {
		if ipVersion == 4 && len(in) >= 20 {
			partial = elide(in[16:20])
		} else if ipVersion == 6 && len(in) >= 40 && in[6] == unix.IPPROTO_TCP && hdr.csumStart == 40 {
			partial = elide(in[24:40])
		}
	}
	return gsoSplit(in, hdr, bufs, sizes, offset, ipVersion == 6, partial)
}

func (tun *NativeTun) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	tun.readOpMu.Lock()
	defer tun.readOpMu.Unlock()
	select {
	case err := <-tun.errors:
		return 0, err
	default:
	}
	if tun.vnetHdr && tun.first().drain.Load() {
		return tun.readDrain(bufs, sizes, offset)
	}
	readInto := bufs[0][offset:]
	if tun.vnetHdr {
		readInto = tun.readBuff[:]
	}
	n, err := tun.tunFile.Read(readInto)
	if errors.Is(err, syscall.EBADFD) {
		err = os.ErrClosed
	}
	if err != nil {
		return 0, err
	}
	if tun.vnetHdr {
		return handleVirtioRead(readInto[:n], bufs, sizes, offset, tun.elide())
	}
	sizes[0] = n
	return 1, nil
}

func (tun *NativeTun) elide() func([]byte) bool {
	if f := tun.first().elideTCPChecksum.Load(); f != nil {
		return *f
	}
	return nil
}

// readDrain is weft's Read (WEFT-PATCHES.md, "TUN read drain"): it waits
// through the runtime's poller until the TUN is readable, then reads
// packets without waiting until the kernel's queue is empty or bufs are
// full, so that a burst of small packets (one per read(2)) leaves in one
// batch, one sendmmsg, UDP GSO where the sizes allow it. A packet whose
// segments do not fit in what is left of bufs stays in readBuff and opens
// the next call. It never waits once it holds a packet: the latency of a
// lone packet is one read(2), as upstream's.
func (tun *NativeTun) readDrain(bufs [][]byte, sizes []int, offset int) (int, error) {
	d := &tun.rd
	*d = drainState{bufs: bufs, sizes: sizes, offset: offset, elide: tun.elide()}
	defer func() { tun.rd = drainState{} }()
	if n := tun.pending; n > 0 {
		tun.pending = 0
		if !tun.take(n) {
			return d.total, d.rerr
		}
	}
	err := tun.rc.Read(tun.readFn)
	total, rerr := d.total, d.rerr
	if total > 0 {
		return total, rerr
	}
	if err != nil {
		// The runtime's poller fails a wait only when the file is
		// closing (no deadline is ever set): what os.File.Read says.
		return 0, os.ErrClosed
	}
	if errors.Is(rerr, syscall.EBADFD) || errors.Is(rerr, unix.EBADF) {
		rerr = os.ErrClosed
	}
	return 0, rerr
}

// drainState is one readDrain call's arguments and results.
type drainState struct {
	bufs   [][]byte
	sizes  []int
	offset int
	elide  func([]byte) bool
	total  int
	rerr   error
}

// take splits the packet in readBuff[:n] into rd.bufs[rd.total:], or
// keeps it pending when it does not fit; it reports whether to go on.
func (tun *NativeTun) take(n int) bool {
	d := &tun.rd
	if d.total > 0 && virtioSegments(tun.readBuff[:n]) > len(d.bufs)-d.total {
		tun.pending = n
		return false
	}
	k, err := handleVirtioRead(tun.readBuff[:n], d.bufs[d.total:], d.sizes[d.total:], d.offset, d.elide)
	d.total += k
	if err != nil {
		d.rerr = err
		return false
	}
	return d.total < len(d.bufs)
}

// drainFD is readDrain's RawConn.Read callback (tun.readFn): it reads
// until the queue is empty or the batch full; false (wait in the poller)
// only while it holds nothing.
func (tun *NativeTun) drainFD(fd uintptr) bool {
	d := &tun.rd
	for {
		n, err := rawRead(fd, tun.readBuff[:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return d.total > 0 // nothing yet: wait in the poller
		case err != nil:
			if d.total == 0 {
				d.rerr = err
			}
			return true
		}
		if !tun.take(n) {
			return true
		}
	}
}

// virtioSegments is how many packets handleVirtioRead makes of in (a
// virtio header and a packet): 1 without GSO, otherwise an upper bound
// (the payload is measured from csum_start, before the transport header).
func virtioSegments(in []byte) int {
	var hdr virtioNetHdr
	if hdr.decode(in) != nil || hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_NONE || hdr.gsoSize == 0 {
		return 1
	}
	payload := len(in) - virtioNetHdrLen - int(hdr.csumStart)
	if payload <= 0 {
		return 1
	}
	return (payload + int(hdr.gsoSize) - 1) / int(hdr.gsoSize)
}

func (tun *NativeTun) Events() <-chan Event {
	return tun.events
}

func (tun *NativeTun) Close() error {
	var err1, err2 error
	tun.closeOnce.Do(func() {
		if tun.statusListenersShutdown != nil {
			close(tun.statusListenersShutdown)
			if tun.netlinkCancel != nil {
				err1 = tun.netlinkCancel.Cancel()
			}
		} else if tun.events != nil {
			close(tun.events)
		}
		err2 = tun.tunFile.Close()
	})
	if err1 != nil {
		return err1
	}
	return err2
}

func (tun *NativeTun) BatchSize() int {
	return tun.batchSize
}

const (
	// TODO: support TSO with ECN bits
	tunTCPOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	tunUDPOffloads = unix.TUN_F_USO4 | unix.TUN_F_USO6
)

func (tun *NativeTun) initFromFlags(name string) error {
	sc, err := tun.tunFile.SyscallConn()
	if err != nil {
		return err
	}
	if e := sc.Control(func(fd uintptr) {
		var (
			ifr *unix.Ifreq
		)
		ifr, err = unix.NewIfreq(name)
		if err != nil {
			return
		}
		err = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr)
		if err != nil {
			return
		}
		got := ifr.Uint16()
		if got&unix.IFF_VNET_HDR != 0 {
			// tunTCPOffloads were added in Linux v2.6. We require their support
			// if IFF_VNET_HDR is set.
			err = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, tunTCPOffloads)
			if err != nil {
				return
			}
			tun.vnetHdr = true
			tun.batchSize = conn.IdealBatchSize
			// tunUDPOffloads were added in Linux v6.2. We do not return an
			// error if they are unsupported at runtime.
			tun.udpGSO = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, tunTCPOffloads|tunUDPOffloads) == nil
		} else {
			tun.batchSize = 1
		}
	}); e != nil {
		return e
	}
	return err
}

// CreateTUN creates a Device with the provided name and MTU.
func CreateTUN(name string, mtu int) (Device, error) {
	return createTUN(name, mtu, 0)
}

// CreateMultiQueueTUN is CreateTUN with IFF_MULTI_QUEUE (weft,
// WEFT-PATCHES.md "TUN queues"): NewQueue opens more queues of the same
// interface, among which the kernel spreads the packets it sends by their
// pair of addresses (setSteering).
func CreateMultiQueueTUN(name string, mtu int) (Device, error) {
	return createTUN(name, mtu, unix.IFF_MULTI_QUEUE)
}

// openQueue opens /dev/net/tun as the interface name (created if it does
// not exist), with offloads and extra flags, non-blocking.
func openQueue(name string, flags uint16) (int, error) {
	nfd, err := unix.Open(cloneDevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if os.IsNotExist(err) {
			return -1, fmt.Errorf("CreateTUN(%q) failed; %s does not exist", name, cloneDevicePath)
		}
		return -1, err
	}

	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(nfd)
		return -1, err
	}
	// IFF_VNET_HDR enables the "tun status hack" via routineHackListener()
	// where a null write will return EINVAL indicating the TUN is up.
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR | flags)
	err = unix.IoctlIfreq(nfd, unix.TUNSETIFF, ifr)
	if err != nil {
		unix.Close(nfd)
		return -1, err
	}

	err = unix.SetNonblock(nfd, true)
	if err != nil {
		unix.Close(nfd)
		return -1, err
	}
	return nfd, nil
}

func createTUN(name string, mtu int, flags uint16) (Device, error) {
	nfd, err := openQueue(name, flags)
	if err != nil {
		return nil, err
	}

	// Note that the above -- open,ioctl,nonblock -- must happen prior to handing it to netpoll as below this line.

	if flags&unix.IFF_MULTI_QUEUE != 0 {
		if err := setSteering(nfd); err != nil {
			unix.Close(nfd)
			return nil, err
		}
	}
	fd := os.NewFile(uintptr(nfd), cloneDevicePath)
	dev, err := CreateTUNFromFile(fd, mtu)
	if err == nil && flags&unix.IFF_MULTI_QUEUE != 0 {
		dev.(*NativeTun).multiQueue = true
	}
	return dev, err
}

// first is the NativeTun whose settings (SetReadDrain,
// SetPartialTCPChecksums) tun follows: itself, or the first queue of a
// queue made by NewQueue.
func (tun *NativeTun) first() *NativeTun {
	if tun.queueOf != nil {
		return tun.queueOf
	}
	return tun
}

// sameNetns reports whether the TUN queue nfd's interface is in the same
// network namespace as t's (TUNGETDEVNETNS).
func sameNetns(t *NativeTun, nfd int) (bool, error) {
	nsOf := func(fd int) (unix.Stat_t, error) {
		var st unix.Stat_t
		ns, err := unix.IoctlRetInt(fd, unix.TUNGETDEVNETNS)
		if err != nil {
			return st, os.NewSyscallError("TUNGETDEVNETNS", err)
		}
		defer unix.Close(ns)
		return st, unix.Fstat(ns, &st)
	}
	a, err := nsOf(nfd)
	if err != nil {
		return false, err
	}
	var b unix.Stat_t
	var berr error
	if cerr := t.rc.Control(func(fd uintptr) { b, berr = nsOf(int(fd)) }); cerr != nil {
		return false, cerr
	}
	if berr != nil {
		return false, berr
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// NewQueue opens one more queue of dev, made by CreateMultiQueueTUN (weft),
// from a thread in dev's network namespace:
// a Device that reads the packets the kernel gives this queue and writes
// as any queue does, with dev's settings (read drain, checksums) now and
// later. It has no events and no MTU of
// its own (dev's); closing it closes the queue only. dev must outlive it.
func NewQueue(dev Device) (Device, error) {
	t, ok := dev.(*NativeTun)
	if !ok || !t.multiQueue {
		return nil, errors.New("tun: NewQueue needs a TUN made by CreateMultiQueueTUN")
	}
	name, err := t.Name()
	if err != nil {
		return nil, err
	}
	nfd, err := openQueue(name, unix.IFF_MULTI_QUEUE)
	if err != nil {
		return nil, fmt.Errorf("tun: open another queue of %s: %w", name, err)
	}
	// By name, TUNSETIFF attaches to the interface of the calling
	// thread's network namespace, or makes a new one there.
	if same, err := sameNetns(t, nfd); err != nil || !same {
		unix.Close(nfd)
		if err == nil {
			err = errors.New("the calling thread is in another network namespace")
		}
		return nil, fmt.Errorf("tun: open another queue of %s: %w", name, err)
	}
	file := os.NewFile(uintptr(nfd), cloneDevicePath)
	q := &NativeTun{
		tunFile:     file,
		events:      make(chan Event), // closed by Close; never written
		errors:      make(chan error, 1),
		tcpGROTable: newTCPGROTable(),
		udpGROTable: newUDPGROTable(),
		toWrite:     make([]int, 0, conn.IdealBatchSize),
		multiQueue:  true,
		queueOf:     t,
	}
	if q.rc, err = file.SyscallConn(); err != nil {
		file.Close()
		return nil, err
	}
	q.readFn, q.writeFn = q.drainFD, q.writeFD
	if err := q.initFromFlags(name); err != nil {
		file.Close()
		return nil, err
	}
	q.nameOnce.Do(func() { q.nameCache, q.nameErr = name, nil })
	return q, nil
}

// CreateTUNFromFile creates a Device from an os.File with the provided MTU.
func CreateTUNFromFile(file *os.File, mtu int) (Device, error) {
	tun := &NativeTun{
		tunFile:                 file,
		events:                  make(chan Event, 5),
		errors:                  make(chan error, 5),
		statusListenersShutdown: make(chan struct{}),
		tcpGROTable:             newTCPGROTable(),
		udpGROTable:             newUDPGROTable(),
		toWrite:                 make([]int, 0, conn.IdealBatchSize),
	}
	rc, err := file.SyscallConn()
	if err != nil {
		return nil, err
	}
	tun.rc = rc
	tun.readFn, tun.writeFn = tun.drainFD, tun.writeFD

	name, err := tun.Name()
	if err != nil {
		return nil, err
	}

	err = tun.initFromFlags(name)
	if err != nil {
		return nil, err
	}

	// start event listener
	tun.index, err = getIFIndex(name)
	if err != nil {
		return nil, err
	}

	tun.netlinkSock, err = createNetlinkSocket()
	if err != nil {
		return nil, err
	}
	tun.netlinkCancel, err = rwcancel.NewRWCancel(tun.netlinkSock)
	if err != nil {
		unix.Close(tun.netlinkSock)
		return nil, err
	}

	tun.hackListenerClosed.Lock()
	go tun.routineNetlinkListener()
	go tun.routineHackListener() // cross namespace

	err = tun.setMTU(mtu)
	if err != nil {
		unix.Close(tun.netlinkSock)
		return nil, err
	}

	return tun, nil
}

// CreateUnmonitoredTUNFromFD creates a Device from the provided file
// descriptor.
func CreateUnmonitoredTUNFromFD(fd int) (Device, string, error) {
	err := unix.SetNonblock(fd, true)
	if err != nil {
		return nil, "", err
	}
	file := os.NewFile(uintptr(fd), "/dev/tun")
	tun := &NativeTun{
		tunFile:     file,
		events:      make(chan Event, 5),
		errors:      make(chan error, 5),
		tcpGROTable: newTCPGROTable(),
		udpGROTable: newUDPGROTable(),
		toWrite:     make([]int, 0, conn.IdealBatchSize),
	}
	rc, err := file.SyscallConn()
	if err != nil {
		return nil, "", err
	}
	tun.rc = rc
	name, err := tun.Name()
	if err != nil {
		return nil, "", err
	}
	err = tun.initFromFlags(name)
	if err != nil {
		return nil, "", err
	}
	return tun, name, err
}
