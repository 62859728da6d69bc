/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package device

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// TestRunToCompletionDirectBind: devices run to completion over weft's
// DirectBind (conn/bind_direct_linux.go), against each other and against
// upstream's queued path on a StdNetBind: handshakes, 2048 packets each
// way in windows of 64 (the binds' GSO and GRO), a rekey from each side,
// and down and up (the bind closed under its blocked receivers and opened
// again).
func TestRunToCompletionDirectBind(t *testing.T) {
	direct, std := conn.NewDirectBind, conn.NewStdNetBind
	for _, m := range []struct {
		name  string
		opts  [2]Options
		binds [2]func() conn.Bind
	}{
		{"inline-direct/inline-direct", [2]Options{{RunToCompletion: true}, {RunToCompletion: true}}, [2]func() conn.Bind{direct, direct}},
		{"inline-direct/queued-std", [2]Options{{RunToCompletion: true}, {RunToCompletion: false}}, [2]func() conn.Bind{direct, std}},
	} {
		t.Run(m.name, func(t *testing.T) {
			goroutineLeakCheck(t)
			pair := genModePairBinds(t, m.opts, m.binds)
			if _, ok := pair[0].dev.net.bind.(*conn.DirectBind); !ok {
				t.Fatalf("device 0 has a %T, want a *conn.DirectBind", pair[0].dev.net.bind)
			}
			pair.Send(t, Ping, nil)
			pair.Send(t, Pong, nil)
			pair.exchange(t, 0, 2048, 64)
			for i := range pair {
				peer := onlyPeer(t, pair[i].dev)
				before := peer.keypairs.Current()
				peer.ExpireCurrentKeypairs()
				pair.exchange(t, uint32(4096*(i+1)), 256, 64)
				if peer.keypairs.Current() == before {
					t.Fatalf("device %d: no new session after expiring the keypair", i)
				}
			}
			// Down and up: DirectBind.Close ends the receivers blocked
			// in recvmmsg, Open gives new ones.
			if err := pair[0].dev.Down(); err != nil {
				t.Fatal(err)
			}
			if err := pair[0].dev.Up(); err != nil {
				t.Fatal(err)
			}
			key := pair[0].dev.staticIdentity.publicKey
			if err := pair[1].dev.IpcSet(uapiCfg("public_key", fmt.Sprintf("%x", key[:]),
				"endpoint", fmt.Sprintf("127.0.0.1:%d", pair[0].dev.net.port))); err != nil {
				t.Fatal(err)
			}
			// As in TestRunToCompletionUpDownTraffic: device 0's first
			// packet starts the handshake; it may wait for a retry.
			msg := tuntest.Ping(pair[1].ip, pair[0].ip)
			pair[0].tun.Outbound <- msg
			select {
			case got := <-pair[1].tun.Inbound:
				if !bytes.Equal(got, msg) {
					t.Fatal("the first packet after Up did not transit intact")
				}
			case <-time.After(RekeyTimeout + 10*time.Second):
				t.Fatalf("the first packet after Up did not transit in %v", RekeyTimeout+10*time.Second)
			}
			pair.exchange(t, 20000, 256, 64)
		})
	}
}
