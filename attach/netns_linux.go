package attach

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// InContainer runs f on a thread inside the network namespace of the
// container attached as name ([Container] or [Netns]), so that the
// sockets f opens are the container's: their packets leave by its veth
// and meet the guard and the engine as its own traffic does. f must not
// start goroutines that expect that namespace. A socket stays in the
// namespace it was created in after InContainer returns.
//
// The namespace is found from the host veth: its peer's namespace id
// (IFLA_LINK_NETNSID), looked up among the named namespaces (NetnsDir)
// and then those of running processes (/proc/PID/ns/net), since the agent
// keeps no path for a CNI runtime's namespace.
func InContainer(name string, f func() error) error {
	ns, err := containerNetns(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter the network namespace of container %s: %w", name, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked, so the runtime ends it with the
		// goroutine instead of reusing it in the wrong namespace.
		return fmt.Errorf("return from the network namespace of container %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// containerNetns opens the network namespace of the container end of
// name's veth pair.
func containerNetns(name string) (netns.NsHandle, error) {
	host, err := netlink.LinkByName(HostVethName(name))
	if err != nil {
		return netns.None(), fmt.Errorf("container %s: host veth %s: %w", name, HostVethName(name), err)
	}
	id := host.Attrs().NetNsID
	if id < 0 {
		return netns.None(), fmt.Errorf("container %s: the peer of veth %s is in no other network namespace", name, host.Attrs().Name)
	}
	var cands []string
	if p := filepath.Join(NetnsDir, name); fileExists(p) {
		cands = append(cands, p)
	}
	if ents, err := os.ReadDir(NetnsDir); err == nil {
		for _, e := range ents {
			cands = append(cands, filepath.Join(NetnsDir, e.Name()))
		}
	}
	if procs, err := filepath.Glob("/proc/[0-9]*/ns/net"); err == nil {
		cands = append(cands, procs...)
	}
	for _, p := range cands {
		ns, err := netns.GetFromPath(p)
		if err != nil {
			continue
		}
		if got, err := netlink.GetNetNsIdByFd(int(ns)); err == nil && got == id {
			return ns, nil
		}
		ns.Close()
	}
	return netns.None(), errors.New("container " + name + ": its network namespace (id " + fmt.Sprint(id) + " as the cell sees it) is neither named in " + NetnsDir + " nor held by a process")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
