/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package device

import (
	"os"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

// newRealBind is the bind of the tests over real UDP sockets
// (genTestPair, genModePair).
var newRealBind = conn.NewDefaultBind

// TestMain runs the package's tests in weft's modes:
// WG_RUN_TO_COMPLETION=1 makes every NewDevice run to completion (rtc.go);
// WG_BIND=direct gives the tests over real sockets weft's DirectBind
// (conn/bind_direct_linux.go) instead of the default bind.
func TestMain(m *testing.M) {
	if os.Getenv("WG_RUN_TO_COMPLETION") == "1" {
		defaultRunToCompletion = true
	}
	switch os.Getenv("WG_BIND") {
	case "", "default":
	case "direct":
		newRealBind = conn.NewDirectBind
	default:
		println("WG_BIND: want direct or default, got", os.Getenv("WG_BIND"))
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// TestRealBindEnv: WG_BIND=direct gives the tests a DirectBind.
func TestRealBindEnv(t *testing.T) {
	b := newRealBind()
	_, direct := b.(*conn.DirectBind)
	if want := os.Getenv("WG_BIND") == "direct"; direct != want {
		t.Fatalf("WG_BIND=%q: the tests' bind is a %T", os.Getenv("WG_BIND"), b)
	}
}
