package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// createUnderlay makes the underlay namespace with its bridge.
func (l *Lab) createUnderlay() error {
	if err := newNamedNetns(l.Underlay, false); err != nil {
		return err
	}
	if err := InNetns(l.Underlay, bridgeWithoutNetfilter); err != nil {
		return fmt.Errorf("lab: underlay %s: %w", l.Underlay, err)
	}
	return withHandle(l.Underlay, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: l.bridge}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge %s: %w", l.bridge, err)
		}
		return h.LinkSetUp(br)
	})
}

// bridgeNetfilter are the sysctls by which br_netfilter, where it is
// loaded, hands every bridged frame to the IP, IPv6 and ARP hooks of the
// bridge's namespace (1 by default in every new namespace).
var bridgeNetfilter = []string{
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
	"/proc/sys/net/bridge/bridge-nf-call-arptables",
}

// bridgeWithoutNetfilter turns br_netfilter off in the calling thread's
// namespace: the underlay stands for a switch, which runs no host
// firewall, and the ladder compares weft with rungs over a plain veth
// (docs/performance.md). Without br_netfilter there is nothing to turn off.
func bridgeWithoutNetfilter() error {
	for _, f := range bridgeNetfilter {
		if err := os.WriteFile(f, []byte("0"), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// createCell makes the cell's namespace and its veth to the bridge, and
// addresses the cell end.
func (l *Lab) createCell(c *Cell) error {
	if err := newNamedNetns(c.Netns, true); err != nil {
		return err
	}
	return l.attachToBridge(c.Netns, c.bridgeLink, c.cellLink, c.UnderlayIP)
}

// attachToBridge joins namespace ns to the underlay bridge by a veth pair
// (brLink on the bridge, nsLink in ns) and addresses nsLink ip/24.
func (l *Lab) attachToBridge(ns, brLink, nsLink string, ip netip.Addr) error {
	h2, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("lab: open netns %s: %w", ns, err)
	}
	defer h2.Close()
	err = withHandle(l.Underlay, func(h *netlink.Handle) error {
		br, err := h.LinkByName(l.bridge)
		if err != nil {
			return err
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: brLink, MasterIndex: br.Attrs().Index},
			PeerName:      nsLink,
			PeerNamespace: netlink.NsFd(h2),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s/%s: %w", brLink, nsLink, err)
		}
		return h.LinkSetUp(veth)
	})
	if err != nil {
		return err
	}
	return withHandle(ns, func(h *netlink.Handle) error {
		link, err := h.LinkByName(nsLink)
		if err != nil {
			return err
		}
		addr := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(ip, 24))}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("address %s: %w", nsLink, err)
		}
		return h.LinkSetUp(link)
	})
}

// AddUnderlayHost makes a namespace "<run>-h<N>" on the underlay bridge
// with address ip (198.18.0.1-.10: the cells have .11 and above): a host outside
// the overlay, such as "the internet" of the egress tests. Close deletes
// it with the rest of the lab. It returns the namespace's name.
func (l *Lab) AddUnderlayHost(ip netip.Addr) (string, error) {
	if !netip.MustParsePrefix(UnderlayPrefix).Contains(ip) || ip.As4()[3] == 0 || ip.As4()[3] > 10 {
		return "", fmt.Errorf("lab: underlay host address %v: want one of %s below the cells' (.1-.10)", ip, UnderlayPrefix)
	}
	n := l.hosts.Add(1)
	ns := l.Name(fmt.Sprintf("h%d", n))
	if err := newNamedNetns(ns, false); err != nil {
		return "", err
	}
	if err := l.attachToBridge(ns, fmt.Sprintf("%shb%d", l.Run, n), fmt.Sprintf("%shu%d", l.Run, n), ip); err != nil {
		return "", err
	}
	return ns, nil
}

// SetLink sets the underlay link of cell i up or down (its bridge port, so
// the cell keeps its address and routes): down partitions the cell.
func (l *Lab) SetLink(i int, up bool) error {
	c, err := l.Cell(i)
	if err != nil {
		return err
	}
	return withHandle(l.Underlay, func(h *netlink.Handle) error {
		link, err := h.LinkByName(c.bridgeLink)
		if err != nil {
			return err
		}
		if up {
			return h.LinkSetUp(link)
		}
		return h.LinkSetDown(link)
	})
}

// NewVethPair makes two fresh namespaces nsA and nsB joined by a veth pair
// with addresses ipA and ipB (the veth baseline of the benchmarks). Name
// the namespaces with the run prefix (Lab.Name or RunPrefix()+"-..."), so
// stale cleanup can find them. cleanup deletes both namespaces; it may be
// called more than once.
func NewVethPair(nsA, nsB string, ipA, ipB netip.Prefix) (cleanup func(), err error) {
	var made []string // namespaces this call created
	del := func() {
		for _, name := range made {
			deleteNetns(name)
		}
	}
	defer func() {
		if err != nil {
			del()
		}
	}()
	for _, name := range []string{nsA, nsB} {
		if err := newNamedNetns(name, false); err != nil {
			return nil, err
		}
		made = append(made, name)
	}
	// Interface names are per namespace; keep the run prefix, fit 15 bytes.
	base := familyPrefix
	if m := runOfName.FindStringSubmatch(nsA); m != nil {
		base = familyPrefix + m[1]
	}
	nameA, nameB := truncate(base, 13)+"va", truncate(base, 13)+"vb"
	nsHandleB, err := netns.GetFromName(nsB)
	if err != nil {
		return nil, err
	}
	defer nsHandleB.Close()
	err = withHandle(nsA, func(h *netlink.Handle) error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: nameA},
			PeerName:      nameB,
			PeerNamespace: netlink.NsFd(nsHandleB),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s/%s: %w", nameA, nameB, err)
		}
		return addrUp(h, nameA, ipA)
	})
	if err != nil {
		return nil, err
	}
	err = withHandle(nsB, func(h *netlink.Handle) error { return addrUp(h, nameB, ipB) })
	if err != nil {
		return nil, err
	}
	return del, nil
}

func addrUp(h *netlink.Handle, name string, p netip.Prefix) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil {
		return fmt.Errorf("address %s %s: %w", name, p, err)
	}
	return h.LinkSetUp(link)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// withHandle runs fn with a netlink handle bound to namespace name.
func withHandle(name string, fn func(*netlink.Handle) error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("lab: open netns %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("lab: netlink in %s: %w", name, err)
	}
	defer h.Close()
	if err := fn(h); err != nil {
		return fmt.Errorf("lab: in netns %s: %w", name, err)
	}
	return nil
}

// newNamedNetns creates the named namespace /run/netns/name, brings its
// lo up and, with forward, sets net.ipv4.ip_forward=1 in it. The work is
// done on a locked thread of its own goroutine that returns to the
// original namespace; if it cannot, the thread stays locked and the
// runtime discards it when the goroutine exits.
func newNamedNetns(name string, forward bool) error {
	path := filepath.Join(netnsDir, name)
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("lab: netns %s already exists", name)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err == nil {
			ns.Close()
			if forward {
				// /proc/sys/net shows the namespace of the opening thread.
				err = os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
			}
		} else if _, serr := os.Lstat(path); serr == nil {
			os.Remove(path) // NewNamed created the file but failed to mount
		}
		if rerr := netns.Set(orig); rerr != nil {
			errc <- fmt.Errorf("restore netns: %w", rerr) // thread stays locked
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("lab: create netns %s: %w", name, err)
	}
	err := withHandle(name, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
	if err != nil {
		deleteNetns(name)
	}
	return err
}

// deleteNetns removes the named namespace's bind mount and file. The
// namespace itself goes away with its last process. Missing is not an
// error.
func deleteNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("lab: unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

// deleteNetnsMatching deletes every named namespace whose name matches.
func deleteNetnsMatching(match func(name string) bool) error {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if match(e.Name()) {
			errs = append(errs, deleteNetns(e.Name()))
		}
	}
	return errors.Join(errs...)
}

var (
	runOfName = regexp.MustCompile(`^` + familyPrefix + `(\d+)-`)
	runOfUAPI = regexp.MustCompile(`^` + familyPrefix + `(\d+)c\d+\.sock$`)
)

// removeUAPISockets removes the WireGuard UAPI sockets of lab interfaces
// ("wl<pid>c<i>.sock") whose pid matches.
func removeUAPISockets(match func(pid string) bool) error {
	entries, err := os.ReadDir(uapiDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	var errs []error
	for _, e := range entries {
		m := runOfUAPI.FindStringSubmatch(e.Name())
		if m == nil || !match(m[1]) {
			continue
		}
		if err := os.Remove(filepath.Join(uapiDir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("lab: %w", err))
		}
	}
	return errors.Join(errs...)
}

// processGone reports whether no process has the decimal id pid.
// Unparsable or non-positive ids are never "gone": they are not ours.
func processGone(pid string) bool {
	n, err := strconv.Atoi(pid)
	if err != nil || n <= 0 {
		return false
	}
	return errors.Is(syscall.Kill(n, 0), syscall.ESRCH)
}

// CleanupStale deletes the named namespaces "wl<pid>-*", WireGuard UAPI
// sockets "wl<pid>c<i>.sock" and temporary directories "wl<pid>-*" left
// by lab processes that no longer exist.
// It kills nothing. New calls it; logf may be nil.
func CleanupStale(logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	err := deleteNetnsMatching(func(name string) bool {
		m := runOfName.FindStringSubmatch(name)
		if m == nil || !processGone(m[1]) {
			return false
		}
		logf("lab: deleting stale netns %s", name)
		return true
	})
	return errors.Join(err, removeUAPISockets(processGone), removeStaleTempDirs(logf))
}

// removeStaleTempDirs removes the directories New made in os.TempDir()
// ("wl<pid>-*") for processes that no longer exist.
func removeStaleTempDirs(logf func(format string, args ...any)) error {
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return nil // nothing we made can be there
	}
	var errs []error
	for _, e := range entries {
		m := runOfName.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() || !processGone(m[1]) {
			continue
		}
		logf("lab: removing stale dir %s", filepath.Join(os.TempDir(), e.Name()))
		errs = append(errs, os.RemoveAll(filepath.Join(os.TempDir(), e.Name())))
	}
	return errors.Join(errs...)
}
