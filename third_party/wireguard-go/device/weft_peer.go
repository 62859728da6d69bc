/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package device

// LastHandshakeNano is weft's (WEFT-PATCHES.md, "Session state"): the time
// of the peer's last completed handshake, unix nanoseconds, 0 for never.
// It is what UAPI's last_handshake_time_sec and _nsec report, read from
// the peer's atomic without formatting and parsing the whole device's
// configuration.
func (peer *Peer) LastHandshakeNano() int64 {
	return peer.lastHandshakeNano.Load()
}
