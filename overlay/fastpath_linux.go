package overlay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// The fast path: a container's packets to the overlay skip the cell's IP
// stack. Without it every such packet is received on the container's
// veth, goes through the cell's prerouting hooks (the guard's raw chain,
// connection tracking's and NAT's hooks), a FIB lookup under weft's ip
// rules, forwarding and the forward and postrouting hooks before it is
// queued to weft0; on the lab's 2-vCPU guest that is about 1.5 us of the
// sending container's time a packet (docs/performance.md, "Fast path").
//
// A small eBPF program on the ingress of each container veth (tcx) sends a
// packet straight to weft0 (bpf_redirect) when the guard would let it
// through untouched:
//
//	addressed to the veth's MAC,
//	IPv4 without options and unfragmented, TTL above 1,
//	source == the address the guard binds to this veth,
//	destination in the overlay and not the cell's own address,
//	not a TCP SYN (the forward chain clamps its MSS),
//	at most MinPathMTU long.
//
// Every other packet continues into the stack (TCX_NEXT) and meets the
// guard as before, which drops and counts spoofed ones: the program only
// takes the packets the guard accepts, so what passes is unchanged and
// the guard's counters stay whole. The length bound keeps path MTU
// discovery whole: no packet the program takes can exceed a peer's probed
// path MTU (a route's MTU, at least MinPathMTU), so the stack, which sends
// "fragmentation needed", still sees every packet that could; bulk TCP
// (GSO super-packets) takes the stack too. The cell does not decrement the TTL of
// the packets it redirects (it acts as a bridge would); weft's engine
// judges every one of them on weft0 as before. The links belong to the
// agent's process: when the agent stops they go, and the stack and its
// guard carry the packets again.

// TCX return codes (linux/bpf.h).
const (
	tcxNext     = -1
	etherHeader = 14
)

// __sk_buff offsets (linux/bpf.h).
const (
	skbLen     = 0
	skbPktType = 4
	skbData    = 76
	skbDataEnd = 80
)

// fastPathProgram returns the instructions of the program for a veth
// bound to src: packets that pass go to ifindex (weft0).
func fastPathProgram(src, cell netip.Addr, overlay netip.Prefix, ifindex int) asm.Instructions {
	le := func(a netip.Addr) int32 { // a's bytes as a little-endian load sees them
		b := a.As4()
		return int32(binary.LittleEndian.Uint32(b[:]))
	}
	var mask [4]byte
	binary.BigEndian.PutUint32(mask[:], ^uint32(0)<<(32-overlay.Bits()))
	const (
		pass = "pass"
		ip   = etherHeader
	)
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R5, asm.R6, skbPktType, asm.Word),
		asm.JNE.Imm(asm.R5, 0, pass), // not addressed to the cell's veth (PACKET_HOST)
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, ip+20+14), // Ethernet, IPv4, and a TCP header up to its flags
		asm.JGT.Reg(asm.R4, asm.R3, pass),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half), // EtherType
		asm.JNE.Imm(asm.R5, 0x0008, pass),         // 0x0800, little-endian
		asm.LoadMem(asm.R5, asm.R2, ip, asm.Byte), // version, header length
		asm.JNE.Imm(asm.R5, 0x45, pass),
		asm.LoadMem(asm.R5, asm.R2, ip+6, asm.Half), // flags, fragment offset
		asm.And.Imm32(asm.R5, 0xff3f),               // MF | offset, little-endian
		asm.JNE.Imm(asm.R5, 0, pass),
		asm.LoadMem(asm.R5, asm.R2, ip+8, asm.Byte), // TTL
		asm.JLE.Imm(asm.R5, 1, pass),
		asm.LoadMem(asm.R5, asm.R2, ip+12, asm.Word), // source
		asm.JNE.Imm32(asm.R5, le(src), pass),
		asm.LoadMem(asm.R5, asm.R2, ip+16, asm.Word), // destination
		asm.JEq.Imm32(asm.R5, le(cell), pass),
		asm.And.Imm32(asm.R5, int32(binary.LittleEndian.Uint32(mask[:]))),
		asm.JNE.Imm32(asm.R5, le(overlay.Masked().Addr()), pass),
		asm.LoadMem(asm.R5, asm.R2, ip+9, asm.Byte), // protocol
		asm.JNE.Imm(asm.R5, 6, "len"),
		asm.LoadMem(asm.R5, asm.R2, ip+20+13, asm.Byte), // TCP flags
		asm.JSet.Imm(asm.R5, 0x02, pass),                // SYN
		asm.LoadMem(asm.R5, asm.R6, skbLen, asm.Word).WithSymbol("len"),
		asm.JGT.Imm(asm.R5, etherHeader+MinPathMTU, pass),
		asm.Mov.Imm(asm.R1, int32(ifindex)),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol(pass),
		asm.Return(),
	}
}

// fastPath keeps one program and tcx link per container veth.
type fastPath struct {
	log     *slog.Logger
	cell    netip.Addr
	overlay netip.Prefix
	tun     string // weft0's name

	mu    sync.Mutex
	veths map[string]*fastVeth // guarded by mu: by veth name
	off   bool                 // guarded by mu: the kernel refused; the stack carries everything
}

type fastVeth struct {
	src     netip.Addr
	ifindex int // the veth's
	tun     int // weft0's, when linked
	link    link.Link
	prog    *ebpf.Program
}

func newFastPath(log *slog.Logger, tun string, cell netip.Addr, overlay netip.Prefix) *fastPath {
	return &fastPath{log: log, tun: tun, cell: cell, overlay: overlay, veths: map[string]*fastVeth{}}
}

// Sync gives every veth of want (IPv4 bindings only) its program, and
// takes it from every other veth. A veth that is gone or was made again
// (another index) gets a new link. It returns the first error; a kernel
// without tcx turns the fast path off, once, with a warning.
func (f *fastPath) Sync(want []GuardEntry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.off {
		return nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("fast path: list links: %w", err)
	}
	index := make(map[string]int, len(links))
	for _, l := range links {
		index[l.Attrs().Name] = l.Attrs().Index
	}
	tun := index[f.tun]
	keep := make(map[string]bool, len(want))
	var first error
	for _, e := range want {
		if !e.IP.Is4() || index[e.Veth] == 0 || tun == 0 {
			continue
		}
		keep[e.Veth] = true
		v := f.veths[e.Veth]
		if v != nil && v.src == e.IP && v.ifindex == index[e.Veth] && v.tun == tun {
			continue
		}
		if v != nil {
			v.close()
			delete(f.veths, e.Veth)
		}
		v, err := f.attach(e.IP, index[e.Veth], tun)
		if errors.Is(err, ebpf.ErrNotSupported) {
			f.log.Warn("fast path off: the kernel has no tcx; the cell's IP stack carries every packet", "err", err)
			f.off = true
			f.closeAllLocked()
			return nil
		}
		if err != nil {
			if first == nil {
				first = fmt.Errorf("fast path for %s: %w", e.Veth, err)
			}
			continue
		}
		f.veths[e.Veth] = v
	}
	for name, v := range f.veths {
		if !keep[name] {
			v.close()
			delete(f.veths, name)
		}
	}
	return first
}

func (f *fastPath) attach(src netip.Addr, ifindex, tun int) (*fastVeth, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "weft_fast",
		Type:         ebpf.SchedCLS,
		License:      "Dual MIT/GPL",
		Instructions: fastPathProgram(src, f.cell, f.overlay, tun),
	})
	if err != nil {
		return nil, fmt.Errorf("load program: %w", err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		prog.Close()
		return nil, fmt.Errorf("attach to ingress: %w", err)
	}
	return &fastVeth{src: src, ifindex: ifindex, tun: tun, link: l, prog: prog}, nil
}

func (v *fastVeth) close() {
	v.link.Close()
	v.prog.Close()
}

// Veths returns the veths the fast path serves.
func (f *fastPath) Veths() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for name := range f.veths {
		out = append(out, name)
	}
	return out
}

// Close takes the program from every veth.
func (f *fastPath) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closeAllLocked()
}

func (f *fastPath) closeAllLocked() {
	for name, v := range f.veths {
		v.close()
		delete(f.veths, name)
	}
}
