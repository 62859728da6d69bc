// Command weftwg is plainwg (bench/internal/plainwg) built against weft's
// copy of wireguard-go (third_party/wireguard-go) instead of upstream's,
// with its data path chosen by -datapath: inline (run to completion,
// device.Options.RunToCompletion, as weft cells run) or queued
// (upstream's). No weft code but the copy. It runs in the caller's network
// namespace, reads its WireGuard configuration in UAPI form from stdin
// until EOF, addresses and brings up the TUN, prints "ready" and runs
// until SIGTERM or SIGINT. bench/interop_test.go runs it against plainwg.
//
//	weftwg -iface wg0 -addr 10.255.250.1/24 -mtu 1420 -datapath inline < uapi.conf
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

func main() {
	iface := flag.String("iface", "wg0", "TUN device name")
	addr := flag.String("addr", "", "address/prefix of the TUN (required)")
	mtu := flag.Int("mtu", 1420, "TUN MTU")
	datapath := flag.String("datapath", "inline", "inline (run to completion) or queued (upstream's)")
	flag.Parse()
	if *datapath != "inline" && *datapath != "queued" {
		fmt.Fprintf(os.Stderr, "weftwg: -datapath %q: want inline or queued\n", *datapath)
		os.Exit(2)
	}
	if err := run(*iface, *addr, *mtu, *datapath == "inline"); err != nil {
		fmt.Fprintln(os.Stderr, "weftwg:", err)
		os.Exit(1)
	}
}

func run(iface, addr string, mtu int, inline bool) error {
	pfx, err := netip.ParsePrefix(addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	uapi, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	tdev, err := tun.CreateTUN(iface, mtu)
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", iface, err)
	}
	if inline {
		tun.SetReadDrain(tdev, true) // as overlay.New does on the inline path
	}
	dev := device.NewDeviceWithOptions(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, "weftwg: "),
		device.Options{RunToCompletion: inline})
	defer dev.Close()
	if err := dev.IpcSet(string(uapi)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if err := dev.Up(); err != nil {
		return err
	}
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return err
	}
	ipnet := &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), pfx.Addr().BitLen())}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return fmt.Errorf("address %v: %w", pfx, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	fmt.Printf("ready batch=%d inline=%v\n", tdev.BatchSize(), dev.RunToCompletion())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}
