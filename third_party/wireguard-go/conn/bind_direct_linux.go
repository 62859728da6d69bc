/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package conn

// weft's direct bind (WEFT-PATCHES.md, "Direct bind"): UDP sockets of its
// own, read and written by raw recvmmsg and sendmmsg on a non-blocking
// descriptor in the runtime's poller, with no x/net layer and no
// allocation per datagram.

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DirectBind is a Bind on UDP sockets of its own (one IPv4, one
// IPv6 with IPV6_V6ONLY, on the same port), with UDP GSO on send and
// UDP GRO on receive where the kernel has them, as StdNetBind.
//
// It does not keep sticky source addresses (no IP_PKTINFO): datagrams
// leave from the source address the routing table picks, as nebula's do.
// On a multi-homed host where replies must leave from the address a
// peer wrote to, use StdNetBind.
//
// Endpoints are *StdNetEndpoint (with no source), so either bind sends
// to the other's endpoints. Received endpoints are shared between
// datagrams from the same address and never modified after they are
// handed out.
type DirectBind struct {
	mu     sync.Mutex // serialises Open, Close and SetMark
	state  atomic.Pointer[directState]
	tx     sync.Pool // *directTx
	queues int       // sockets per family (NewDirectBindQueues)
}

var (
	_ Bind = (*DirectBind)(nil)
)

// NewDirectBind returns a DirectBind (Linux); elsewhere a StdNetBind.
func NewDirectBind() Bind { return NewDirectBindQueues(1) }

// NewDirectBindQueues returns a DirectBind with n sockets per family on
// the same port (SO_REUSEPORT; weft, WEFT-PATCHES.md "TUN queues"): n
// ReceiveFuncs each, among which the kernel spreads datagrams by their
// source address and port, so that the receivers of different peers run
// on different cores. Sends leave by the first. The ReceiveFuncs come
// family by family, each family's n in order.
func NewDirectBindQueues(n int) Bind {
	return &DirectBind{
		tx:     sync.Pool{New: func() any { return newDirectTx() }},
		queues: max(n, 1),
	}
}

// directState is one Open's sockets; nil where the family is missing.
type directState struct {
	v4, v6   *directSock
	rx4, rx6 *directRx     // their receivers (for tests)
	more     []*directSock // receive-only sockets on the same port (queues > 1)
}

// all returns every socket of st.
func (st *directState) all() []*directSock {
	return append([]*directSock{st.v4, st.v6}, st.more...)
}

// directSock is one non-blocking UDP socket in the runtime's poller.
type directSock struct {
	file   *os.File // owns the descriptor; its RawConn calls hold it open
	rc     syscall.RawConn
	is6    bool
	laddr  string
	rxGRO  bool
	txGSO  atomic.Bool
	closed atomic.Bool
}

func (*DirectBind) ParseEndpoint(s string) (Endpoint, error) {
	e, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &StdNetEndpoint{AddrPort: e}, nil
}

func (*DirectBind) BatchSize() int { return IdealBatchSize }

// openDirectSock opens a UDP socket bound to port (0: any), with
// SO_REUSEPORT if reuse.
func openDirectSock(is6 bool, port int, reuse bool) (*directSock, int, error) {
	family := unix.AF_INET
	if is6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_UDP)
	if err != nil {
		return nil, 0, os.NewSyscallError("socket", err)
	}
	// As controlFns (controlfns_linux.go), but for IP_PKTINFO.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBufferSize)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBufferSize)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBufferSize)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBufferSize)
	var sa unix.Sockaddr
	if is6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return nil, 0, os.NewSyscallError("setsockopt", err)
		}
		sa = &unix.SockaddrInet6{Port: port}
	} else {
		sa = &unix.SockaddrInet4{Port: port}
	}
	if major, minor := kernelVersion(); major > 5 || (major == 5 && minor >= 12) {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}
	if reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			unix.Close(fd)
			return nil, 0, os.NewSyscallError("setsockopt SO_REUSEPORT", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, 0, os.NewSyscallError("bind", err)
	}
	la, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, 0, os.NewSyscallError("getsockname", err)
	}
	s := &directSock{is6: is6}
	// Non-blocking: os.NewFile registers it with the runtime's poller.
	s.file = os.NewFile(uintptr(fd), "udp")
	if s.rc, err = s.file.SyscallConn(); err != nil {
		s.file.Close()
		return nil, 0, err
	}
	switch la := la.(type) {
	case *unix.SockaddrInet4:
		port = la.Port
		s.laddr = netip.AddrPortFrom(netip.AddrFrom4(la.Addr), uint16(port)).String()
	case *unix.SockaddrInet6:
		port = la.Port
		s.laddr = netip.AddrPortFrom(netip.AddrFrom16(la.Addr), uint16(port)).String()
	}
	// As supportsUDPOffload (features_linux.go).
	_, errSeg := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	s.txGSO.Store(errSeg == nil)
	gro, errGRO := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO)
	s.rxGRO = errGRO == nil && gro == 1
	return s, port, nil
}

// close ends the waits of the socket's receivers and senders in the
// poller and closes it; the runtime closes the descriptor once no
// RawConn call holds it, so its number is never reused under one.
func (s *directSock) close() error {
	if s == nil || s.closed.Swap(true) {
		return nil
	}
	if err := s.file.Close(); err != nil {
		return os.NewSyscallError("close", err)
	}
	return nil
}

func (b *DirectBind) Open(uport uint16) ([]ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state.Load() != nil {
		return nil, 0, ErrBindAlreadyOpen
	}
	var (
		tries  int
		v4, v6 *directSock
		port   int
		err    error
	)
	reuse := b.queues > 1
again:
	v4, port, err = openDirectSock(false, int(uport), reuse)
	if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
		return nil, 0, err
	}
	if err != nil {
		port = int(uport)
	}
	v6, port, err = openDirectSock(true, port, reuse)
	if uport == 0 && errors.Is(err, unix.EADDRINUSE) && tries < 100 {
		v4.close()
		tries++
		goto again
	}
	if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
		v4.close()
		return nil, 0, err
	}
	if v4 == nil && v6 == nil {
		return nil, 0, unix.EAFNOSUPPORT
	}
	st := &directState{v4: v4, v6: v6}
	// The receivers family by family, each family's sockets in order
	// (device.tunQueue gives receiver k of each family queue k).
	var fns []ReceiveFunc
	for _, first := range []*directSock{v4, v6} {
		if first == nil {
			continue
		}
		rx := newDirectRx(first)
		if first.is6 {
			st.rx6 = rx
		} else {
			st.rx4 = rx
		}
		fns = append(fns, rx.receiveFunc())
		for range b.queues - 1 {
			s, _, err := openDirectSock(first.is6, port, true)
			if err != nil {
				for _, s := range st.all() {
					s.close()
				}
				return nil, 0, err
			}
			st.more = append(st.more, s)
			fns = append(fns, newDirectRx(s).receiveFunc())
		}
	}
	b.state.Store(st)
	return fns, uint16(port), nil
}

func (b *DirectBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.state.Swap(nil)
	if st == nil {
		return nil
	}
	var err error
	for _, s := range st.all() {
		if cerr := s.close(); err == nil {
			err = cerr
		}
	}
	return err
}

func (b *DirectBind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.state.Load()
	if st == nil {
		return nil
	}
	for _, s := range st.all() {
		if s == nil {
			continue
		}
		var err error
		if cerr := s.rc.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); cerr != nil {
			return net.ErrClosed
		}
		if err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return nil
}

// mmsghdr is struct mmsghdr (Go pads it as C does).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

const directOOBSize = 64 // room for a UDP_GRO cmsg (and more)

// directRx is one ReceiveFunc's preallocated state. A ReceiveFunc is
// called by one goroutine at a time (the device's receive routine).
type directRx struct {
	s     *directSock
	msgs  [IdealBatchSize]mmsghdr
	iov   [IdealBatchSize]unix.Iovec
	names [IdealBatchSize]unix.RawSockaddrInet6
	oob   [IdealBatchSize][directOOBSize]byte
	eps   directEndpoints
	read  int // messages the last recvmmsg returned (for tests)

	// readFn is the RawConn.Read callback, made once so that a
	// call allocates nothing; pmsgs its input, pgot and perrno its result.
	readFn func(fd uintptr) bool
	pmsgs  []mmsghdr
	pgot   uintptr
	perrno unix.Errno
}

func newDirectRx(s *directSock) *directRx {
	r := &directRx{s: s}
	for i := range r.msgs {
		h := &r.msgs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iov[i]
		h.SetIovlen(1)
		h.Control = &r.oob[i][0]
	}
	r.eps.m = make(map[directKey]*StdNetEndpoint)
	r.readFn = func(fd uintptr) bool {
		for {
			got, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd,
				uintptr(unsafe.Pointer(&r.pmsgs[0])), uintptr(len(r.pmsgs)), 0, 0, 0)
			switch errno {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			}
			r.pgot, r.perrno = got, errno
			return true
		}
	}
	return r
}

// receiveFunc is r's ReceiveFunc: receiveIPv4 or receiveIPv6 by its
// socket's family (named so that ReceiveFunc.PrettyName says v4 and v6).
func (r *directRx) receiveFunc() ReceiveFunc {
	if r.s.is6 {
		return r.receiveIPv6
	}
	return r.receiveIPv4
}

func (r *directRx) receiveIPv4(bufs [][]byte, sizes []int, eps []Endpoint) (int, error) {
	return r.receive(bufs, sizes, eps)
}

func (r *directRx) receiveIPv6(bufs [][]byte, sizes []int, eps []Endpoint) (int, error) {
	return r.receive(bufs, sizes, eps)
}

func (r *directRx) receive(bufs [][]byte, sizes []int, eps []Endpoint) (int, error) {
	if len(bufs) > IdealBatchSize {
		bufs = bufs[:IdealBatchSize]
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	// With GRO, read as StdNetBind does: into the last len/64 buffers,
	// each of which may hold up to 64 datagrams, split from the front.
	readAt := 0
	if r.s.rxGRO {
		readAt = len(bufs) - max(1, len(bufs)/udpSegmentMaxDatagrams)
	}
	for i := readAt; i < len(bufs); i++ {
		if len(bufs[i]) > 0 {
			r.iov[i].Base = &bufs[i][0]
		} else {
			r.iov[i].Base = nil
		}
		r.iov[i].SetLen(len(bufs[i]))
		r.msgs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		r.msgs[i].hdr.SetControllen(directOOBSize)
		r.msgs[i].hdr.Flags = 0
		r.msgs[i].n = 0
	}
	s := r.s
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	var (
		got   uintptr
		errno unix.Errno
	)
	r.pmsgs = r.msgs[readAt:len(bufs)]
	if err := s.rc.Read(r.readFn); err != nil {
		errno = unix.EBADF // the poller ends a wait only when the socket closes
	} else {
		got, errno = r.pgot, r.perrno
	}
	r.pmsgs = nil
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	if errno != 0 {
		return 0, os.NewSyscallError("recvmmsg", errno)
	}
	r.read = int(got)
	if !s.rxGRO {
		for i := 0; i < int(got); i++ {
			sizes[i] = int(r.msgs[i].n)
			eps[i] = r.endpoint(i)
		}
		return int(got), nil
	}
	return r.split(bufs, sizes, eps, readAt, int(got))
}

// split splits the GRO-coalesced messages msgs[readAt:readAt+got] into
// bufs from the front, as splitCoalescedMessages does.
func (r *directRx) split(bufs [][]byte, sizes []int, eps []Endpoint, readAt, got int) (n int, err error) {
	for i := readAt; i < readAt+got; i++ {
		m := &r.msgs[i]
		size := int(m.n)
		ep := r.endpoint(i)
		gsoSize, err := getGSOSize(r.oob[i][:m.hdr.Controllen])
		if err != nil {
			return n, err
		}
		start, end, numToSplit := 0, size, 1
		if gsoSize > 0 {
			numToSplit = (size + gsoSize - 1) / gsoSize
			end = gsoSize
		}
		for j := 0; j < numToSplit; j++ {
			if n > i {
				return n, errors.New("splitting coalesced packet resulted in overflow")
			}
			sizes[n] = copy(bufs[n], bufs[i][start:end])
			eps[n] = ep
			start = end
			end = min(end+gsoSize, size)
			n++
		}
	}
	return n, nil
}

// directKey is a datagram's source as the kernel wrote it.
type directKey struct {
	addr  [16]byte
	scope uint32
	port  uint16
	is6   bool
}

// directEndpoints caches a ReceiveFunc's endpoints by source address, so
// that the steady state allocates none. Endpoints are never modified
// once handed out (their src stays nil), so the device may keep them.
type directEndpoints struct {
	lastKey directKey
	last    *StdNetEndpoint
	m       map[directKey]*StdNetEndpoint
}

const directEndpointCacheMax = 1024

// endpoint returns the endpoint of msgs[i]'s source.
func (r *directRx) endpoint(i int) *StdNetEndpoint {
	var k directKey
	raw := &r.names[i]
	if raw.Family == unix.AF_INET6 {
		k.is6 = true
		k.addr = raw.Addr
		k.scope = raw.Scope_id
	} else {
		raw4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(raw))
		copy(k.addr[:4], raw4.Addr[:])
	}
	k.port = binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&raw.Port))[:])
	c := &r.eps
	if c.last != nil && c.lastKey == k {
		return c.last
	}
	ep, ok := c.m[k]
	if !ok {
		var addr netip.Addr
		if k.is6 {
			addr = netip.AddrFrom16(k.addr)
			if k.scope != 0 {
				addr = addr.WithZone(strconv.FormatUint(uint64(k.scope), 10))
			}
		} else {
			addr = netip.AddrFrom4([4]byte(k.addr[:4]))
		}
		ep = &StdNetEndpoint{AddrPort: netip.AddrPortFrom(addr, k.port)}
		if len(c.m) >= directEndpointCacheMax {
			clear(c.m)
		}
		c.m[k] = ep
	}
	c.lastKey, c.last = k, ep
	return ep
}

// directTx is one Send's scratch, from DirectBind.tx.
type directTx struct {
	msgs [IdealBatchSize]mmsghdr
	iov  [IdealBatchSize]unix.Iovec
	oob  [IdealBatchSize][directOOBSize]byte
	name unix.RawSockaddrInet6

	// writeFn is the RawConn.Write callback, made once.
	writeFn func(fd uintptr) bool
	wmsgs   []mmsghdr
	wstart  int
	werrno  unix.Errno
}

// setName writes ap into tx.name and returns its length.
func (tx *directTx) setName(ap netip.AddrPort) (uint32, error) {
	port := (*[2]byte)(unsafe.Pointer(&tx.name.Port))[:]
	addr := ap.Addr()
	if addr.Is4() {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&tx.name))
		*sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: addr.As4()}
		binary.BigEndian.PutUint16(port, ap.Port())
		return unix.SizeofSockaddrInet4, nil
	}
	tx.name = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: addr.As16()}
	binary.BigEndian.PutUint16(port, ap.Port())
	if z := addr.Zone(); z != "" {
		if idx, err := strconv.ParseUint(z, 10, 32); err == nil {
			tx.name.Scope_id = uint32(idx)
		} else {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				return 0, err
			}
			tx.name.Scope_id = uint32(ifi.Index)
		}
	}
	return unix.SizeofSockaddrInet6, nil
}

// build lays bufs out as messages to tx.name; with gso, runs of
// equal-size datagrams (the last may be shorter) become one message with
// a UDP_SEGMENT cmsg under coalesceMessages's rules. A coalesced
// message's datagrams are consecutive iovecs, not copied. It returns the
// number of messages.
func (tx *directTx) build(bufs [][]byte, nameLen uint32, gso bool, maxPayloadLen int) int {
	var (
		base     = -1 // message being coalesced into
		gsoSize  int  // its segment size
		payload  int  // its bytes so far
		dgramCnt int  // its datagrams
		endBatch bool // start a new message at the next buffer
	)
	for i, buf := range bufs {
		if len(buf) > 0 {
			tx.iov[i].Base = &buf[0]
		} else {
			tx.iov[i].Base = nil
		}
		tx.iov[i].SetLen(len(buf))
		if i > 0 && gso {
			msgLen := len(buf)
			if payload+msgLen <= maxPayloadLen &&
				msgLen <= gsoSize &&
				gsoSize > 0 &&
				dgramCnt < udpSegmentMaxDatagrams &&
				!endBatch {
				tx.msgs[base].hdr.SetIovlen(dgramCnt + 1)
				payload += msgLen
				dgramCnt++
				if msgLen < gsoSize {
					// A shorter tail is legal but ends the message.
					endBatch = true
				}
				continue
			}
		}
		if dgramCnt > 1 {
			tx.setGSO(base, gsoSize)
		}
		base++
		h := &tx.msgs[base].hdr
		*h = unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&tx.name)),
			Namelen: nameLen,
			Iov:     &tx.iov[i],
		}
		h.SetIovlen(1)
		gsoSize, payload, dgramCnt, endBatch = len(buf), len(buf), 1, false
	}
	if dgramCnt > 1 {
		tx.setGSO(base, gsoSize)
	}
	return base + 1
}

func (tx *directTx) setGSO(base, gsoSize int) {
	control := tx.oob[base][:0]
	setGSOSize(&control, uint16(gsoSize))
	h := &tx.msgs[base].hdr
	h.Control = &tx.oob[base][0]
	h.SetControllen(len(control))
}

// clear drops the scratch's references to the caller's buffers.
func (tx *directTx) clear(n int) {
	for i := range n {
		tx.iov[i].Base = nil
	}
}

func (b *DirectBind) Send(bufs [][]byte, endpoint Endpoint) error {
	ep, ok := endpoint.(*StdNetEndpoint)
	if !ok {
		return ErrWrongEndpointType
	}
	if len(bufs) > IdealBatchSize {
		return errors.New("conn: too many buffers for one Send")
	}
	st := b.state.Load()
	if st == nil {
		return net.ErrClosed
	}
	s, maxPayloadLen := st.v4, maxIPv4PayloadLen
	if ep.Addr().Is6() {
		s, maxPayloadLen = st.v6, maxIPv6PayloadLen
	}
	if s == nil {
		return unix.EAFNOSUPPORT
	}
	tx := b.tx.Get().(*directTx)
	defer b.tx.Put(tx)
	defer tx.clear(len(bufs))
	nameLen, err := tx.setName(ep.AddrPort)
	if err != nil {
		return err
	}

	if s.closed.Load() {
		return net.ErrClosed
	}
	gso := s.txGSO.Load()
	err = s.sendmmsg(tx, tx.msgs[:tx.build(bufs, nameLen, gso, maxPayloadLen)])
	if err != nil && gso && errShouldDisableUDPGSO(err) {
		s.txGSO.Store(false)
		err = s.sendmmsg(tx, tx.msgs[:tx.build(bufs, nameLen, false, maxPayloadLen)])
		return ErrUDPGSODisabled{onLaddr: s.laddr, RetryErr: err}
	}
	return err
}

// sendmmsg sends msgs in one RawConn.Write, waiting in the poller while
// the send buffer is full.
func (s *directSock) sendmmsg(tx *directTx, msgs []mmsghdr) error {
	tx.wmsgs, tx.wstart, tx.werrno = msgs, 0, 0
	err := s.rc.Write(tx.writeFn)
	errno := tx.werrno
	tx.wmsgs = nil
	if err != nil {
		return net.ErrClosed
	}
	if errno != 0 {
		if s.closed.Load() {
			return net.ErrClosed
		}
		return os.NewSyscallError("sendmmsg", errno)
	}
	return nil
}

func newDirectTx() *directTx {
	tx := new(directTx)
	tx.writeFn = func(fd uintptr) bool {
		for tx.wstart < len(tx.wmsgs) {
			// Syscall6, not RawSyscall6: a sendmmsg runs the receiving
			// stack inline (softirq) and may be long, so the runtime
			// may hand the P on (raw: BenchmarkAB UDP 64 B 0.76).
			n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd,
				uintptr(unsafe.Pointer(&tx.wmsgs[tx.wstart])), uintptr(len(tx.wmsgs)-tx.wstart), 0, 0, 0)
			switch e {
			case 0:
				tx.wstart += int(n)
				continue
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			}
			tx.werrno = e
			return true
		}
		return true
	}
	return tx
}
