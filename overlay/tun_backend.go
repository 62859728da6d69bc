package overlay

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// TUN backends (Config.TUNBackend, `weft agent --tun-backend`).
const (
	// TUNAuto uses wireguard-go's TUN with offloads (TSO/GRO through the
	// virtio-net header, batches of up to 128 packets) and falls back to
	// water when the kernel refuses TUNSETOFFLOAD.
	TUNAuto = "auto"
	// TUNWireGuard is wireguard-go's tun.CreateTUN; failure is fatal.
	TUNWireGuard = "wireguard"
	// TUNWater is github.com/songgao/water: one packet per system call, no
	// offloads.
	TUNWater = "water"
)

// tunOffloads are the offloads wireguard-go's TUN requires when it opens the
// device with IFF_VNET_HDR (see tun_linux.go, initFromFlags).
const tunOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6

// ParseTUNBackend validates a --tun-backend value ("" means auto).
func ParseTUNBackend(s string) (string, error) {
	switch s {
	case "", TUNAuto:
		return TUNAuto, nil
	case TUNWireGuard, TUNWater:
		return s, nil
	}
	return "", fmt.Errorf("unknown TUN backend %q (want auto, wireguard or water)", s)
}

// chooseBackend decides the backend for mode given the result of probing
// TUNSETOFFLOAD (probeErr nil: the kernel accepted it). It returns the
// backend and why.
func chooseBackend(mode string, probeErr error) (backend, reason string) {
	switch mode {
	case TUNWireGuard:
		return TUNWireGuard, "configured"
	case TUNWater:
		return TUNWater, "configured"
	}
	if probeErr == nil {
		return TUNWireGuard, "kernel accepts TUNSETOFFLOAD"
	}
	return TUNWater, fmt.Sprintf("kernel refuses TUNSETOFFLOAD: %v", probeErr)
}

// errNoOffloadProbe marks a probe that failed before TUNSETOFFLOAD could be
// tried (no /dev/net/tun, name taken): not a reason to fall back.
var errNoOffloadProbe = errors.New("TUN offload probe failed")

// probeOffload opens a scratch TUN device name with IFF_VNET_HDR, as
// wireguard-go does, and asks for its offloads. The device vanishes when
// the probe closes it. A nil result means the offloads are available;
// errors wrapping errNoOffloadProbe are failures to create a TUN at all.
func probeOffload(name string) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%w: open /dev/net/tun: %w", errNoOffloadProbe, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("%w: %w", errNoOffloadProbe, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("%w: TUNSETIFF %s: %w", errNoOffloadProbe, name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunOffloads); err != nil {
		return os.NewSyscallError("ioctl TUNSETOFFLOAD", err)
	}
	return nil
}

// createTUN creates the TUN device for cfg with the configured backend,
// with queues queues if it can (a multi-queue TUN: the wireguard backend,
// IFF_MULTI_QUEUE and its steering program), and logs which backend it
// took and why. It returns the queues the device can have: 1 unless it is
// multi-queue.
func createTUN(cfg Config, queues int, log *slog.Logger) (tun.Device, string, int, error) {
	mode, err := ParseTUNBackend(cfg.TUNBackend)
	if err != nil {
		return nil, "", 0, err
	}
	var probeErr error
	if mode == TUNAuto {
		probeErr = probeOffload(cfg.Interface)
		if errors.Is(probeErr, errNoOffloadProbe) {
			return nil, "", 0, probeErr
		}
	}
	backend, reason := chooseBackend(mode, probeErr)
	var dev tun.Device
	made := 1
	switch backend {
	case TUNWater:
		dev, err = newWaterTUN(cfg.Interface, cfg.MTU)
	default:
		if queues > 1 {
			if dev, err = tun.CreateMultiQueueTUN(cfg.Interface, cfg.MTU); err != nil {
				// No IFF_MULTI_QUEUE or no steering program (bpf(2)):
				// one queue still works.
				log.Warn("TUN queues unavailable: one queue", "queues", queues, "err", err)
				dev = nil
			} else {
				made = queues
			}
		}
		if dev == nil {
			dev, err = tun.CreateTUN(cfg.Interface, cfg.MTU)
		}
	}
	if err != nil {
		return nil, "", 0, fmt.Errorf("create TUN device %s (%s backend): %w", cfg.Interface, backend, err)
	}
	if mode == TUNAuto && backend == TUNWater {
		log.Warn("TUN backend water: no offloads, one packet per system call", "mode", mode, "reason", reason)
	} else {
		log.Info("TUN backend "+backend, "mode", mode, "reason", reason, "batch", dev.BatchSize())
	}
	return dev, backend, made, nil
}
