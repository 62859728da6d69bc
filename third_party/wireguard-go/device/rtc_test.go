/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package device

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// weft's tests of run to completion (rtc.go): a device run to completion
// against one with upstream's queued data path, over real UDP on
// loopback, must carry every packet both ways, in order and intact,
// through handshakes, rekeying and a spent keypair.

// genModePair is genTestPair with the Options of each device.
func genModePair(tb testing.TB, opts [2]Options) (pair testPair) {
	return genModePairBinds(tb, opts, [2]func() conn.Bind{newRealBind, newRealBind})
}

// genModePairBinds is genModePair with the bind of each device.
func genModePairBinds(tb testing.TB, opts [2]Options, newBind [2]func() conn.Bind) (pair testPair) {
	cfg, endpointCfg := genConfigs(tb)
	for i := range pair {
		p := &pair[i]
		p.tun = tuntest.NewChannelTUN()
		p.ip = netip.AddrFrom4([4]byte{1, 0, 0, byte(i + 1)})
		p.dev = NewDeviceWithOptions(p.tun.TUN(), newBind[i](), NewLogger(LogLevelError, fmt.Sprintf("dev%d: ", i)), opts[i])
		tb.Cleanup(p.dev.Close)
		if err := p.dev.IpcSet(cfg[i]); err != nil {
			tb.Fatalf("configure device %d: %v", i, err)
		}
		if err := p.dev.Up(); err != nil {
			tb.Fatalf("bring up device %d: %v", i, err)
		}
		endpointCfg[i^1] = fmt.Sprintf(endpointCfg[i^1], p.dev.net.port)
	}
	for i := range pair {
		if err := pair[i].dev.IpcSet(endpointCfg[i]); err != nil {
			tb.Fatalf("configure endpoint of device %d: %v", i, err)
		}
	}
	return pair
}

// seqPacket is an IPv4 packet from src to dst whose payload carries seq
// and is 1 to 1300 bytes long, so that padding varies.
func seqPacket(src, dst netip.Addr, seq uint32) []byte {
	n := 20 + 4 + int(seq*7919%1297)
	pkt := make([]byte, n)
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(n))
	pkt[8] = 64
	pkt[9] = 253 // experimental protocol: no checksum to compute
	s, d := src.As4(), dst.As4()
	copy(pkt[12:], s[:])
	copy(pkt[16:], d[:])
	binary.BigEndian.PutUint32(pkt[20:], seq)
	for i := 24; i < n; i++ {
		pkt[i] = byte(seq) ^ byte(i)
	}
	return pkt
}

// exchange sends packets from seq to seq+n-1 in windows of win, both ways
// at once, and checks that each side receives every packet of the other's
// window intact before the next window; in order, if the sender runs to
// completion. (Upstream's queued path may reorder around a new session:
// the TUN reader and the receiver that confirms the session both send
// what is staged, concurrently.)
func (pair *testPair) exchange(t *testing.T, seq uint32, n, win int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for dir := range 2 {
		from, to := pair[dir], pair[dir^1]
		ordered := from.dev.RunToCompletion()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := 0; w < n; w += win {
				for k := range win {
					pkt := seqPacket(from.ip, to.ip, seq+uint32(w+k))
					select {
					case from.tun.Outbound <- pkt:
					case <-time.After(10 * time.Second):
						errs <- fmt.Errorf("%v: TUN not read at packet %d", from.ip, seq+uint32(w+k))
						return
					}
				}
				pending := make(map[uint32]bool, win)
				for k := range win {
					pending[seq+uint32(w+k)] = true
				}
				for k := range win {
					next := seq + uint32(w+k)
					select {
					case got := <-to.tun.Inbound:
						if len(got) < 24 {
							errs <- fmt.Errorf("%v -> %v: got %d bytes", from.ip, to.ip, len(got))
							return
						}
						gotSeq := binary.BigEndian.Uint32(got[20:])
						if ordered && gotSeq != next {
							errs <- fmt.Errorf("%v -> %v: got packet %d, want %d", from.ip, to.ip, gotSeq, next)
							return
						}
						if !pending[gotSeq] || !bytes.Equal(got, seqPacket(from.ip, to.ip, gotSeq)) {
							errs <- fmt.Errorf("%v -> %v: packet %d (%d bytes) duplicated, corrupt or from another window", from.ip, to.ip, gotSeq, len(got))
							return
						}
						delete(pending, gotSeq)
					case <-time.After(10 * time.Second):
						errs <- fmt.Errorf("%v -> %v: %d packets from %d on not received", from.ip, to.ip, len(pending), next)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// onlyPeer returns dev's one peer.
func onlyPeer(t *testing.T, dev *Device) *Peer {
	t.Helper()
	dev.peers.RLock()
	defer dev.peers.RUnlock()
	for _, p := range dev.peers.keyMap {
		return p
	}
	t.Fatal("device has no peer")
	return nil
}

func TestRunToCompletionInterop(t *testing.T) {
	modes := []struct {
		name string
		opts [2]Options
	}{
		{"inline-queued", [2]Options{{RunToCompletion: true}, {RunToCompletion: false}}},
		{"queued-inline", [2]Options{{RunToCompletion: false}, {RunToCompletion: true}}},
		{"inline-inline", [2]Options{{RunToCompletion: true}, {RunToCompletion: true}}},
		{"queued-queued", [2]Options{{RunToCompletion: false}, {RunToCompletion: false}}}, // upstream: the test itself
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			goroutineLeakCheck(t)
			pair := genModePair(t, m.opts)
			for i := range pair {
				if pair[i].dev.RunToCompletion() != m.opts[i].RunToCompletion {
					t.Fatalf("device %d: RunToCompletion() = %v", i, pair[i].dev.RunToCompletion())
				}
			}
			// One way first: handshakes started at once by both sides
			// collide and are retried only after RekeyTimeout.
			pair.Send(t, Ping, nil)
			pair.Send(t, Pong, nil)
			pair.exchange(t, 0, 2048, 64)

			// Rekey from each side: the sender's keypair is expired, so
			// the next window is staged, a handshake starts, and the
			// staged packets go out under the new session.
			for i := range pair {
				peer := onlyPeer(t, pair[i].dev)
				before := peer.keypairs.Current()
				peer.ExpireCurrentKeypairs()
				pair.exchange(t, uint32(4096*(i+1)), 512, 64)
				if peer.keypairs.Current() == before {
					t.Fatalf("device %d: no new session after expiring the keypair", i)
				}
			}

			// A keypair running out of nonces in the middle of a
			// window: the first packets go under it, the rest after the
			// next handshake.
			for i := range pair {
				peer := onlyPeer(t, pair[i].dev)
				kp := peer.keypairs.Current()
				kp.sendNonce.Store(RejectAfterMessages - 10)
				// As if the last handshake were long ago, so that the
				// next may start at once (not RekeyTimeout later).
				peer.handshake.mutex.Lock()
				peer.handshake.lastSentHandshake = time.Now().Add(-RekeyTimeout - time.Second)
				peer.handshake.mutex.Unlock()
				pair.exchange(t, uint32(16384*(i+1)), 256, 64)
				if peer.keypairs.Current() == kp {
					t.Fatalf("device %d: no new session after the keypair ran out of nonces", i)
				}
			}
		})
	}
}

// TestRunToCompletionUpDownTraffic brings a device run to completion down
// and up while its peer keeps a tunnel to it; traffic resumes each time.
func TestRunToCompletionUpDownTraffic(t *testing.T) {
	goroutineLeakCheck(t)
	pair := genModePair(t, [2]Options{{RunToCompletion: true}, {RunToCompletion: false}})
	pair.Send(t, Ping, nil)
	for r := range 5 {
		pair.exchange(t, uint32(r*1000), 128, 32)
		if err := pair[0].dev.Down(); err != nil {
			t.Fatal(err)
		}
		if err := pair[0].dev.Up(); err != nil {
			t.Fatal(err)
		}
		// The port may change on Up: tell the peer.
		key := pair[0].dev.staticIdentity.publicKey
		if err := pair[1].dev.IpcSet(uapiCfg("public_key", fmt.Sprintf("%x", key[:]),
			"endpoint", fmt.Sprintf("127.0.0.1:%d", pair[0].dev.net.port))); err != nil {
			t.Fatal(err)
		}
		// Device 0 lost its sessions: its first packet starts a
		// handshake and confirms the new session on device 1, whose
		// packets would otherwise go under the old one. Without the
		// race detector a round takes less than RekeyTimeout, and the
		// new handshake may then wait for a retry (as with upstream's
		// queued path on both sides): longer than Send waits.
		msg := tuntest.Ping(pair[1].ip, pair[0].ip)
		pair[0].tun.Outbound <- msg
		select {
		case got := <-pair[1].tun.Inbound:
			if !bytes.Equal(got, msg) {
				t.Fatalf("round %d: the first packet after Up did not transit intact", r)
			}
		case <-time.After(RekeyTimeout + 10*time.Second):
			t.Fatalf("round %d: the first packet after Up did not transit in %v", r, RekeyTimeout+10*time.Second)
		}
	}
	pair.exchange(t, 9000, 128, 32)
}

// TestRunToCompletionReceiverNeverWaitsForBind: a UDP receiver that
// confirms a session must not send what is staged itself, since
// BindUpdate and BindClose hold device.net while they wait for the
// receivers to stop, and sending takes device.net: the two would wait for
// each other for ever.
func TestRunToCompletionReceiverNeverWaitsForBind(t *testing.T) {
	goroutineLeakCheck(t)
	pair := genModePair(t, [2]Options{{RunToCompletion: true}, {RunToCompletion: false}})
	pair.Send(t, Ping, nil)
	dev := pair[0].dev
	peer := onlyPeer(t, dev)
	c := dev.GetOutboundElementsContainer()
	elem := dev.NewOutboundElement()
	pkt := seqPacket(pair[0].ip, pair[1].ip, 7)
	elem.packet = elem.buffer[MessageTransportHeaderSize : MessageTransportHeaderSize+len(pkt)]
	copy(elem.packet, pkt)
	c.elems = append(c.elems, elem)
	peer.StagePackets(c)

	dev.net.Lock() // as BindUpdate does while it waits for the receivers
	returned := make(chan struct{})
	go func() {
		peer.sendStagedFromReceiver()
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		dev.net.Unlock()
		t.Fatal("the receiver waited for device.net")
	}
	dev.net.Unlock()
	select { // and the staged packet went out once the lock was free
	case got := <-pair[1].tun.Inbound:
		if binary.BigEndian.Uint32(got[20:]) != 7 {
			t.Fatalf("got packet %d, want 7", binary.BigEndian.Uint32(got[20:]))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("staged packet not sent")
	}
}

// TestRunToCompletionTUNQueues: a device with a second TUN queue
// (Options.TUNQueues) reads and sends the packets of both, each queue's in
// order, to a peer whose DirectBind has two sockets per family on its port
// (SO_REUSEPORT); with two sockets per family itself, its receiver k
// writes into queue k, so the answers, all from one socket of the peer,
// come back in order through one queue; Close stops the second queue's
// reader and closes it.
func TestRunToCompletionTUNQueues(t *testing.T) {
	goroutineLeakCheck(t)
	q := tuntest.NewChannelTUN()
	opts := [2]Options{{RunToCompletion: true, TUNQueues: []tun.Device{q.TUN()}}, {RunToCompletion: true}}
	queues2 := func() conn.Bind { return conn.NewDirectBindQueues(2) }
	pair := genModePairBinds(t, opts, [2]func() conn.Bind{queues2, queues2})
	for i, want := range []tun.Device{pair[0].dev.tun.device, q.TUN(), pair[0].dev.tun.device, q.TUN()} {
		if got := pair[0].dev.tunQueue(i); got != want {
			t.Fatalf("receiver %d writes into %v, want %v", i, got, want)
		}
	}
	if got := len(pair[0].dev.tun.queues); got != 1 {
		t.Fatalf("device has %d more TUN queues, want 1", got)
	}
	// A session: the handshake and the first packet through the first
	// queue, the answer through either.
	pair[0].tun.Outbound <- seqPacket(pair[0].ip, pair[1].ip, 1<<30)
	select {
	case <-pair[1].tun.Inbound:
	case <-time.After(10 * time.Second):
		t.Fatal("no session")
	}
	const n, win = 4096, 64
	from, to := pair[0], pair[1]
	queues := []chan<- []byte{from.tun.Outbound, q.Outbound}
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	for qi, ch := range queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := uint32(qi) << 20
			for k := range uint32(n) {
				select {
				case ch <- seqPacket(from.ip, to.ip, base+k):
				case <-time.After(10 * time.Second):
					errs <- fmt.Errorf("queue %d not read at packet %d", qi, k)
					return
				}
				if k%win == win-1 {
					time.Sleep(time.Millisecond) // windows, so that no queue floods the peer's sockets
				}
			}
		}()
	}
	next := [2]uint32{0, 1 << 20}
	for got := 0; got < 2*n; got++ {
		select {
		case pkt := <-to.tun.Inbound:
			seq := binary.BigEndian.Uint32(pkt[20:])
			qi := seq >> 20
			if qi > 1 || seq != next[qi] || !bytes.Equal(pkt, seqPacket(from.ip, to.ip, seq)) {
				t.Fatalf("packet %d of %d: seq %#x (%d bytes), want %#x or %#x, intact", got, 2*n, seq, len(pkt), next[0], next[1])
			}
			next[qi]++
		case err := <-errs:
			t.Fatal(err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d packets received; next %#x and %#x", got, 2*n, next[0], next[1])
		}
	}
	wg.Wait()
	// Answers: all through the queue of the socket they arrive on.
	var answersOn chan []byte
	for k := range uint32(win) {
		pair[1].tun.Outbound <- seqPacket(to.ip, from.ip, 2<<20+k)
		var pkt []byte
		select {
		case pkt = <-from.tun.Inbound:
			if answersOn == nil {
				answersOn = from.tun.Inbound
			}
			if answersOn != from.tun.Inbound {
				t.Fatalf("answer %d through the first queue, the others through the second", k)
			}
		case pkt = <-q.Inbound:
			if answersOn == nil {
				answersOn = q.Inbound
			}
			if answersOn != q.Inbound {
				t.Fatalf("answer %d through the second queue, the others through the first", k)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("answer %d not received", k)
		}
		if seq := binary.BigEndian.Uint32(pkt[20:]); seq != 2<<20+k {
			t.Fatalf("answer %#x, want %#x", seq, 2<<20+k)
		}
	}
	pair[0].dev.Close()
	if _, err := q.TUN().Read(make([][]byte, 1), make([]int, 1), 0); err == nil {
		t.Fatal("the second queue is open after Close")
	}
}
