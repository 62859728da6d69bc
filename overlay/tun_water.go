package overlay

import (
	"errors"
	"os"
	"sync"

	"github.com/songgao/water"
	"golang.zx2c4.com/wireguard/tun"
)

// waterTUN adapts a github.com/songgao/water TUN interface to wireguard-go's
// tun.Device: one packet per Read and Write call (batch size 1), no
// virtio-net header, so no segmentation or coalescing offloads. It is the
// fallback for kernels that refuse TUNSETOFFLOAD, and a point of comparison
// in the benchmark ladder.
type waterTUN struct {
	ifce   *water.Interface
	name   string
	mtu    int
	events chan tun.Event

	closeOnce sync.Once
}

var _ tun.Device = (*waterTUN)(nil)

// newWaterTUN creates the TUN device name with water.
func newWaterTUN(name string, mtu int) (*waterTUN, error) {
	ifce, err := water.New(water.Config{
		DeviceType:             water.TUN,
		PlatformSpecificParams: water.PlatformSpecificParams{Name: name},
	})
	if err != nil {
		return nil, err
	}
	w := &waterTUN{ifce: ifce, name: ifce.Name(), mtu: mtu, events: make(chan tun.Event, 1)}
	// The link is brought up by setupRouting; tell wireguard-go the
	// device is usable, as the native TUN's netlink listener would.
	w.events <- tun.EventUp
	return w, nil
}

func (w *waterTUN) File() *os.File { return nil }

// Read reads one packet into bufs[0][offset:].
func (w *waterTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	n, err := w.ifce.Read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

// Write writes each packet bufs[i][offset:] with its own write(2).
func (w *waterTUN) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		if _, err := w.ifce.Write(b[offset:]); err != nil {
			return i, err
		}
	}
	return len(bufs), nil
}

func (w *waterTUN) MTU() (int, error)        { return w.mtu, nil }
func (w *waterTUN) Name() (string, error)    { return w.name, nil }
func (w *waterTUN) Events() <-chan tun.Event { return w.events }
func (w *waterTUN) BatchSize() int           { return 1 }

func (w *waterTUN) Close() error {
	err := errors.New("tun: already closed")
	w.closeOnce.Do(func() {
		err = w.ifce.Close()
		close(w.events)
	})
	return err
}
