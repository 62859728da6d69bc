//go:build !linux

/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package conn

// NewDirectBind returns a StdNetBind: weft's direct bind
// (bind_direct_linux.go) is Linux only.
func NewDirectBind() Bind { return NewStdNetBind() }

// NewDirectBindQueues returns a StdNetBind, as NewDirectBind.
func NewDirectBindQueues(n int) Bind { return NewStdNetBind() }
