// Command plainwg is rung (b) of the benchmark ladder: a plain wireguard-go
// device on a TUN (tun.CreateTUN, offloads as wireguard-go negotiates them)
// with no weft code. It runs in the caller's network namespace (start it
// with `nsenter --net=/run/netns/NS`), reads its WireGuard configuration in
// UAPI form (private_key=..., listen_port=..., public_key=..., ...) from
// stdin until EOF, addresses and brings up the TUN, prints "ready" and runs
// until SIGTERM or SIGINT.
//
//	plainwg -iface wg0 -addr 10.255.250.1/24 -mtu 1420 < uapi.conf
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
	flag.Parse()
	if err := run(*iface, *addr, *mtu); err != nil {
		fmt.Fprintln(os.Stderr, "plainwg:", err)
		os.Exit(1)
	}
}

func run(iface, addr string, mtu int) error {
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
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, "plainwg: "))
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
	fmt.Printf("ready batch=%d\n", tdev.BatchSize())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}
