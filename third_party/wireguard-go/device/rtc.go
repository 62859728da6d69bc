/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

// Run to completion: weft's data path (WEFT-PATCHES.md).
//
// Upstream hands every batch from the routine that read it to a pool of
// crypto workers and to a per-peer routine that puts the batches back in
// order: TUN reader -> encryption workers -> per-peer sender -> UDP, and
// UDP receiver -> decryption workers -> per-peer receiver -> TUN. Each
// hand-off is a channel operation and often a goroutine wake-up, and every
// packet takes a 64 KiB buffer from the pool and gives it back on another
// core.
//
// With Options.RunToCompletion the routine that reads a batch carries it to
// the end: the TUN reader routes, seals and sends each peer's part of its
// batch; the UDP receiver opens, replay-checks, source-checks and writes
// the whole batch to the TUN in one Write (so the TUN's GRO still
// coalesces it). The buffers of a batch stay with the routine that read it
// and are reused for the next batch; only packets that must wait (staged
// for a handshake) and handshake messages take buffers from the pool.
// Everything else is upstream's code: handshakes, cookies, timers, keypair
// rotation, roaming, staging, keepalives (which are sealed and sent by the
// goroutine that asks for them).

package device

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// Options are weft's options of a Device, fixed at NewDeviceWithOptions.
type Options struct {
	// RunToCompletion: the routine that reads a batch (from the TUN or a
	// UDP socket) seals or opens it and sends or writes it, with no
	// crypto workers and no per-peer routines (rtc.go).
	RunToCompletion bool
	// MessageBuffers, if set, gives the device its message buffers
	// (pools.go); nil: its own sync.Pool, as upstream.
	MessageBuffers MessageBuffers
	// TUNQueues are more queues of the TUN (tun.NewQueue), each read by
	// a reader of its own that runs to completion, as the first; receiver
	// i writes into queue i modulo their number (Device.tunQueue). The
	// device closes them. With RunToCompletion only (else they are
	// closed at once).
	TUNQueues []tun.Device
}

// defaultRunToCompletion is NewDevice's Options.RunToCompletion; tests
// set it (WG_RUN_TO_COMPLETION=1) to run upstream's tests in that mode.
var defaultRunToCompletion = false

// RunToCompletion reports whether the device runs to completion.
func (device *Device) RunToCompletion() bool { return device.rtc }

// sendKeypair returns the keypair to seal new packets for peer with, or
// nil when they must be staged (no session, or a spent one: the caller
// then starts a handshake, as SendStagedPackets does).
func (peer *Peer) sendKeypair() *Keypair {
	if !peer.device.isUp() {
		return nil
	}
	keypair := peer.keypairs.Current()
	if keypair == nil || keypair.sendNonce.Load() >= RejectAfterMessages || time.Since(keypair.created) >= RejectAfterTime {
		return nil
	}
	return keypair
}

// sealAndSendLocked assigns nonces of keypair to elems in order, seals
// them in place and sends them to peer in one batch, with the timer events
// of upstream's sequential sender. It returns how many it sent: fewer than
// len(elems) when keypair ran out of nonces (the rest are untouched and
// must be staged). The caller holds peer.inline.send, which makes the
// order of nonces the order on the wire, and keeps elems; their packets
// are consumed.
func (peer *Peer) sealAndSendLocked(keypair *Keypair, elems []*QueueOutboundElement) (int, error) {
	device := peer.device
	s := &peer.inline.send
	n := len(elems)
	for i, elem := range elems {
		elem.nonce = keypair.sendNonce.Add(1) - 1
		if elem.nonce >= RejectAfterMessages {
			keypair.sendNonce.Store(RejectAfterMessages)
			n = i
			break
		}
		elem.peer = peer
		elem.keypair = keypair
		device.seal(elem, &s.zeros, &s.nonce)
	}
	if n == 0 {
		return 0, nil
	}
	dataSent := false
	for _, elem := range elems[:n] {
		if len(elem.packet) != MessageKeepaliveSize {
			dataSent = true
		}
		s.bufs = append(s.bufs, elem.packet)
		elem.keypair, elem.peer = nil, nil
	}
	peer.timersAnyAuthenticatedPacketTraversal()
	peer.timersAnyAuthenticatedPacketSent()
	err := peer.SendBuffers(s.bufs)
	clear(s.bufs)
	s.bufs = s.bufs[:0]
	if dataSent {
		peer.timersDataSent()
	}
	return n, err
}

// sentInline finishes a send of sealAndSendLocked, after the caller let go
// of peer.inline.send: the error is logged, a session is kept fresh.
func (peer *Peer) sentInline(err error) {
	if err != nil {
		var errGSO conn.ErrUDPGSODisabled
		if errors.As(err, &errGSO) {
			peer.device.log.Verbosef(err.Error())
			err = errGSO.RetryErr
		}
	}
	if err != nil {
		peer.device.log.Errorf("%v - Failed to send data packets: %v", peer, err)
		return
	}
	peer.keepKeyFreshSending()
}

// sendStagedInline is SendStagedPackets run to completion: the staged
// batches are sealed and sent by the calling goroutine.
func (peer *Peer) sendStagedInline() {
	device := peer.device
	for len(peer.queue.staged) > 0 {
		keypair := peer.sendKeypair()
		if keypair == nil {
			if device.isUp() {
				peer.SendHandshakeInitiation(false)
			}
			return
		}
		// Take the batch and send it under the lock: a batch taken
		// earlier by another goroutine is on the wire before it.
		peer.inline.send.Lock()
		var c *QueueOutboundElementsContainer
		select {
		case c = <-peer.queue.staged:
		default:
			peer.inline.send.Unlock()
			return
		}
		sent, err := 0, error(nil)
		if peer.isRunning.Load() {
			sent, err = peer.sealAndSendLocked(keypair, c.elems)
		}
		peer.inline.send.Unlock()
		if sent > 0 {
			peer.sentInline(err)
		}
		var rest *QueueOutboundElementsContainer
		if sent < len(c.elems) && peer.isRunning.Load() {
			// Out of nonces: the rest waits for the next session
			// (out of order, as upstream's SendStagedPackets does).
			rest = device.GetOutboundElementsContainer()
			rest.elems = append(rest.elems, c.elems[sent:]...)
			c.elems = c.elems[:sent]
		}
		for _, elem := range c.elems {
			device.PutMessageBuffer(elem.buffer)
			device.PutOutboundElement(elem)
		}
		device.PutOutboundElementsContainer(c)
		if rest != nil {
			peer.StagePackets(rest)
		}
	}
}

// outBatch is the part of a TUN batch for one peer.
type outBatch struct {
	peer  *Peer
	elems []*QueueOutboundElement
	idx   []int // indices of elems in the reader's batch
}

// RoutineReadFromTUNInline is RoutineReadFromTUN run to completion: it
// reads a batch, routes each packet to its peer, and seals and sends each
// peer's packets itself. The batch's buffers stay with it, except those of
// packets it stages (no session yet): those go with the packets and are
// replaced from the pool.
func (device *Device) RoutineReadFromTUNInline(dev tun.Device) {
	defer func() {
		device.log.Verbosef("Routine: TUN reader - stopped")
		device.state.stopping.Done()
		device.queue.encryption.wg.Done()
	}()

	device.log.Verbosef("Routine: TUN reader (run to completion) - started")

	var (
		batchSize = device.BatchSize()
		readErr   error
		elems     = make([]*QueueOutboundElement, batchSize)
		bufs      = make([][]byte, batchSize)
		sizes     = make([]int, batchSize)
		count     int
		offset    = MessageTransportHeaderSize
		batches   []outBatch // reused; only [:nb] are live
	)

	for i := range elems {
		elems[i] = device.NewOutboundElement()
		bufs[i] = elems[i].buffer[:]
	}

	defer func() {
		for _, elem := range elems {
			if elem != nil {
				device.PutMessageBuffer(elem.buffer)
				device.PutOutboundElement(elem)
			}
		}
	}()

	for {
		count, readErr = dev.Read(bufs, sizes, offset)
		nb := 0
		last := -1 // batches[last] took the previous packet
		for i := 0; i < count; i++ {
			if sizes[i] < 1 {
				continue
			}
			elem := elems[i]
			elem.packet = bufs[i][offset : offset+sizes[i]]
			peer := device.routeOutbound(elem.packet)
			if peer == nil {
				continue
			}
			if last < 0 || batches[last].peer != peer {
				last = -1
				for j := range batches[:nb] {
					if batches[j].peer == peer {
						last = j
						break
					}
				}
				if last < 0 {
					if nb == len(batches) {
						batches = append(batches, outBatch{})
					}
					last = nb
					nb++
					batches[last].peer = peer
				}
			}
			b := &batches[last]
			b.elems = append(b.elems, elem)
			b.idx = append(b.idx, i)
		}

		for j := range batches[:nb] {
			b := &batches[j]
			device.sendBatchInline(b, elems, bufs)
			clear(b.elems)
			b.elems, b.idx, b.peer = b.elems[:0], b.idx[:0], nil
		}

		if readErr != nil {
			if errors.Is(readErr, tun.ErrTooManySegments) {
				device.log.Verbosef("Dropped some packets from multi-segment read: %v", readErr)
				continue
			}
			if !device.isClosed() {
				if !errors.Is(readErr, os.ErrClosed) {
					device.log.Errorf("Failed to read packet from TUN device: %v", readErr)
				}
				go device.Close()
			}
			return
		}
	}
}

// routeOutbound returns the peer whose allowed IPs hold packet's
// destination, or nil.
func (device *Device) routeOutbound(packet []byte) *Peer {
	switch packet[0] >> 4 {
	case 4:
		if len(packet) < ipv4.HeaderLen {
			return nil
		}
		return device.allowedips.Lookup(packet[IPv4offsetDst : IPv4offsetDst+net.IPv4len])
	case 6:
		if len(packet) < ipv6.HeaderLen {
			return nil
		}
		return device.allowedips.Lookup(packet[IPv6offsetDst : IPv6offsetDst+net.IPv6len])
	default:
		device.log.Verbosef("Received packet with unknown IP version")
		return nil
	}
}

// sendBatchInline seals and sends b's packets when its peer has a session
// and nothing staged (which must go first), and stages them otherwise:
// then their elements leave the reader's batch (elems, bufs), which gets
// new ones.
func (device *Device) sendBatchInline(b *outBatch, elems []*QueueOutboundElement, bufs [][]byte) {
	peer := b.peer
	if !peer.isRunning.Load() {
		return
	}
	sent := 0
	if keypair := peer.sendKeypair(); keypair != nil {
		// Staged packets go first. Whoever takes them holds the lock
		// until they are sent, so none is in flight when the queue is
		// empty under it.
		peer.inline.send.Lock()
		var err error
		if len(peer.queue.staged) == 0 {
			sent, err = peer.sealAndSendLocked(keypair, b.elems)
		}
		peer.inline.send.Unlock()
		if sent > 0 {
			peer.sentInline(err)
		}
	}
	if sent == len(b.elems) {
		return
	}
	c := device.GetOutboundElementsContainer()
	for k, elem := range b.elems[sent:] {
		c.elems = append(c.elems, elem)
		i := b.idx[sent+k]
		elems[i] = device.NewOutboundElement()
		bufs[i] = elems[i].buffer[:]
	}
	peer.StagePackets(c)
	peer.SendStagedPackets()
}

// inBatch is the part of a UDP batch for one peer.
type inBatch struct {
	peer  *Peer
	elems []*QueueInboundElement
}

// RoutineReceiveIncomingInline is RoutineReceiveIncoming run to
// completion: it receives a batch, opens each transport message, passes
// each peer's messages through upstream's sequential receiver logic
// (Peer.receive) and writes all the batch's packets to the TUN queue dev
// (tunQueue) in one Write. Handshake messages go to the handshake workers
// as upstream's do.
func (device *Device) RoutineReceiveIncomingInline(maxBatchSize int, recv conn.ReceiveFunc, dev tun.Device) {
	recvName := recv.PrettyName()
	defer func() {
		device.log.Verbosef("Routine: receive incoming %s - stopped", recvName)
		device.queue.decryption.wg.Done()
		device.queue.handshake.wg.Done()
		device.net.stopping.Done()
	}()

	device.log.Verbosef("Routine: receive incoming %s (run to completion) - started", recvName)

	var (
		bufsArrs    = make([]*[MaxMessageSize]byte, maxBatchSize)
		bufs        = make([][]byte, maxBatchSize)
		sizes       = make([]int, maxBatchSize)
		endpoints   = make([]conn.Endpoint, maxBatchSize)
		elems       = make([]QueueInboundElement, maxBatchSize) // reader-owned, never pooled
		tunBufs     = make([][]byte, 0, maxBatchSize)
		batches     []inBatch // reused; only [:nb] are live
		nonce       [chacha20poly1305.NonceSize]byte
		count       int
		err         error
		deathSpiral int
	)

	for i := range bufsArrs {
		bufsArrs[i] = device.GetMessageBuffer()
		bufs[i] = bufsArrs[i][:]
	}

	defer func() {
		for i := range bufsArrs {
			if bufsArrs[i] != nil {
				device.PutMessageBuffer(bufsArrs[i])
			}
		}
	}()

	for {
		count, err = recv(bufs, sizes, endpoints)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			device.log.Verbosef("Failed to receive %s packet: %v", recvName, err)
			if neterr, ok := err.(net.Error); ok && !neterr.Temporary() {
				return
			}
			if deathSpiral < 10 {
				deathSpiral++
				time.Sleep(time.Second / 3)
				continue
			}
			return
		}
		deathSpiral = 0

		nb := 0
		last := -1
		for i, size := range sizes[:count] {
			if size < MinMessageSize {
				continue
			}
			packet := bufsArrs[i][:size]
			msgType := binary.LittleEndian.Uint32(packet[:4])
			if msgType != MessageTransportType {
				if device.queueHandshake(msgType, packet, bufsArrs[i], endpoints[i]) {
					bufsArrs[i] = device.GetMessageBuffer()
					bufs[i] = bufsArrs[i][:]
				}
				continue
			}
			if len(packet) < MessageTransportSize {
				continue
			}
			receiver := binary.LittleEndian.Uint32(packet[MessageTransportOffsetReceiver:MessageTransportOffsetCounter])
			value := device.indexTable.Lookup(receiver)
			keypair := value.keypair
			if keypair == nil || keypair.created.Add(RejectAfterTime).Before(time.Now()) {
				continue
			}
			elem := &elems[i]
			elem.buffer = bufsArrs[i]
			elem.packet = packet
			elem.keypair = keypair
			elem.endpoint = endpoints[i]
			elem.counter = 0
			openInPlace(elem, &nonce)

			peer := value.peer
			if last < 0 || batches[last].peer != peer {
				last = -1
				for j := range batches[:nb] {
					if batches[j].peer == peer {
						last = j
						break
					}
				}
				if last < 0 {
					if nb == len(batches) {
						batches = append(batches, inBatch{})
					}
					last = nb
					nb++
					batches[last].peer = peer
				}
			}
			batches[last].elems = append(batches[last].elems, elem)
		}

		for j := range batches[:nb] {
			b := &batches[j]
			if b.peer.isRunning.Load() {
				b.peer.inline.recv.Lock()
				tunBufs = b.peer.receive(b.elems, tunBufs)
				b.peer.inline.recv.Unlock()
			}
			for _, elem := range b.elems {
				elem.clearPointers()
			}
			clear(b.elems)
			b.elems, b.peer = b.elems[:0], nil
		}
		if len(tunBufs) > 0 {
			_, err := dev.Write(tunBufs, MessageTransportOffsetContent)
			if err != nil && !device.isClosed() {
				device.log.Errorf("Failed to write packets to TUN device: %v", err)
			}
			clear(tunBufs)
			tunBufs = tunBufs[:0]
		}
	}
}

// queueHandshake hands a handshake message to the handshake workers, as
// RoutineReceiveIncoming does, and reports whether it took buffer.
func (device *Device) queueHandshake(msgType uint32, packet []byte, buffer *[MaxMessageSize]byte, endpoint conn.Endpoint) bool {
	switch msgType {
	case MessageInitiationType:
		if len(packet) != MessageInitiationSize {
			return false
		}
	case MessageResponseType:
		if len(packet) != MessageResponseSize {
			return false
		}
	case MessageCookieReplyType:
		if len(packet) != MessageCookieReplySize {
			return false
		}
	default:
		device.log.Verbosef("Received message with unknown type")
		return false
	}
	select {
	case device.queue.handshake.c <- QueueHandshakeElement{
		msgType:  msgType,
		buffer:   buffer,
		packet:   packet,
		endpoint: endpoint,
	}:
		return true
	default:
		return false
	}
}
