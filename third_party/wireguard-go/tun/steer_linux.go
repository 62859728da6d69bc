/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package tun

// weft: the queue a multi-queue TUN gives each packet it sends
// (WEFT-PATCHES.md, "TUN queues").

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel's own choice (tun_automq_select_queue) hashes the flow, ports
// included, when it can: an IPv4 datagram too large for the MTU leaves in
// fragments that carry no ports, so they hash apart from the unfragmented
// datagrams of the same flow and the two kinds swap places between queues.
// weft steers by the address pair instead: every packet between two
// containers, fragment or not, any protocol, goes to one queue, in order,
// and many pairs spread over the queues. The program is a socket filter
// (TUNSETSTEERINGEBPF): its result modulo the number of queues is the
// queue.

// bpfInsn is struct bpf_insn.
type bpfInsn struct {
	code uint8
	regs uint8 // dst | src<<4
	off  int16
	imm  int32
}

// Instruction classes and fields (linux/bpf.h, linux/filter.h).
const (
	bpfLD    = 0x00
	bpfALU   = 0x04
	bpfJMP   = 0x05
	bpfALU64 = 0x07
	bpfW     = 0x00
	bpfB     = 0x10
	bpfABS   = 0x20
	bpfK     = 0x00
	bpfX     = 0x08
	bpfMOV   = 0xb0
	bpfXOR   = 0xa0
	bpfMUL   = 0x20
	bpfRSH   = 0x70
	bpfJA    = 0x00
	bpfJEQ   = 0x10
	bpfEXIT  = 0x90
)

func ldAbs(size uint8, off int32) bpfInsn { return bpfInsn{code: bpfLD | bpfABS | size, imm: off} }
func mov64X(dst, src uint8) bpfInsn {
	return bpfInsn{code: bpfALU64 | bpfMOV | bpfX, regs: dst | src<<4}
}
func xor64X(dst, src uint8) bpfInsn {
	return bpfInsn{code: bpfALU64 | bpfXOR | bpfX, regs: dst | src<<4}
}

// steeringProgram returns the program: the XOR of the source and
// destination address words (IPv4, or the eight words of IPv6), mixed by a
// multiplication; r0 is the result, r6 the context LD_ABS reads.
func steeringProgram() []bpfInsn {
	p := []bpfInsn{
		mov64X(6, 1),   // r6 = skb
		ldAbs(bpfB, 0), // r0 = version and header length
		{code: bpfALU64 | bpfRSH | bpfK, imm: 4},
		{code: bpfJMP | bpfJEQ | bpfK, imm: 6, off: 5}, // IPv6: skip the IPv4 part
		ldAbs(bpfW, 12),                                // IPv4 source
		mov64X(7, 0),
		ldAbs(bpfW, 16), // IPv4 destination
		xor64X(7, 0),
		{code: bpfJMP | bpfJA, off: 17}, // to the mix (after 1 + 16 IPv6 instructions)
		{code: bpfALU64 | bpfMOV | bpfK, regs: 7},
	}
	for off := int32(8); off < 40; off += 4 { // IPv6 source and destination
		p = append(p, ldAbs(bpfW, off), xor64X(7, 0))
	}
	return append(p,
		mov64X(0, 7),
		bpfInsn{code: bpfALU | bpfMUL | bpfK, imm: -0x61c88647}, // 0x9e3779b9, 32-bit
		bpfInsn{code: bpfALU | bpfRSH | bpfK, imm: 16},
		bpfInsn{code: bpfJMP | bpfEXIT},
	)
}

// setSteering loads steeringProgram and makes it the steering program of
// the TUN whose queue fd is: every queue follows it.
func setSteering(fd int) error {
	insns := steeringProgram()
	license := []byte("Dual MIT/GPL\x00")
	log := make([]byte, 4096)
	var attr [128]byte // union bpf_attr, for BPF_PROG_LOAD
	*(*uint32)(unsafe.Pointer(&attr[0])) = unix.BPF_PROG_TYPE_SOCKET_FILTER
	*(*uint32)(unsafe.Pointer(&attr[4])) = uint32(len(insns))
	*(*uint64)(unsafe.Pointer(&attr[8])) = uint64(uintptr(unsafe.Pointer(&insns[0])))
	*(*uint64)(unsafe.Pointer(&attr[16])) = uint64(uintptr(unsafe.Pointer(&license[0])))
	*(*uint32)(unsafe.Pointer(&attr[24])) = 1 // log level
	*(*uint32)(unsafe.Pointer(&attr[28])) = uint32(len(log))
	*(*uint64)(unsafe.Pointer(&attr[32])) = uint64(uintptr(unsafe.Pointer(&log[0])))
	// EAGAIN: the verifier stopped for a pending signal (the runtime's
	// preemption signals, say); libbpf retries too.
	var prog uintptr
	var errno unix.Errno
	for range 16 {
		prog, _, errno = unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr[0])), unsafe.Sizeof(attr))
		if errno != unix.EAGAIN && errno != unix.EINTR {
			break
		}
	}
	if errno != 0 {
		return fmt.Errorf("load the TUN steering program: %w: %s", errno, unix.ByteSliceToString(log))
	}
	defer unix.Close(int(prog))
	pfd := int32(prog)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETSTEERINGEBPF, uintptr(unsafe.Pointer(&pfd))); errno != 0 {
		return os.NewSyscallError("TUNSETSTEERINGEBPF", errno)
	}
	return nil
}
