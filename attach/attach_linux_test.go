package attach

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lab"
)

// TestAttachLifecycle plays the cell in a scratch network namespace: a
// container whose namespace the cell makes (Container) and one whose
// namespace a runtime made (Netns, two interfaces) are attached, checked,
// labelled, found again from the delivery table, entered (InContainer),
// refused when attached twice, and detached, leaving nothing behind.
func TestAttachLifecycle(t *testing.T) {
	lab.RequireRoot(t)
	p := lab.RunPrefix()
	cellNS, named, runtimeNS := p+"-acell", p+"-actr", p+"-art"
	for _, ns := range []string{cellNS, named, runtimeNS} {
		exec.Command("ip", "netns", "del", ns).Run() // a leftover of this pid
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	for _, ns := range []string{cellNS, runtimeNS} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
		}
	}
	cfg := Config{MTU: 1400, DeliveryTable: 30565, LocalSubnet: netip.MustParsePrefix("10.255.1.0/24")}
	ipNamed, ipRT, ipRT2 := netip.MustParseAddr("10.255.1.2"), netip.MustParseAddr("10.255.1.3"), netip.MustParseAddr("10.255.1.4")
	rtPath := filepath.Join(NetnsDir, runtimeNS)
	cni, err := AttachmentName("weft", "ctr-1", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	cni2, err := AttachmentName("weft", "ctr-1", "net1")
	if err != nil {
		t.Fatal(err)
	}

	err = lab.InNetns(cellNS, func() error {
		if err := Container(cfg, named, ipNamed); err != nil {
			t.Fatalf("Container: %v", err)
		}
		if err := Container(cfg, named, ipRT); !errors.Is(err, ErrContainerExists) {
			t.Errorf("Container again: %v, want ErrContainerExists", err)
		}
		att, err := Netns(cfg, cni, rtPath, "eth0", ipRT)
		if err != nil {
			t.Fatalf("Netns: %v", err)
		}
		if att.HostVeth != HostVethName(cni) || att.IfName != "eth0" || att.IP != ipRT || len(att.MAC) != 6 || len(att.HostMAC) != 6 {
			t.Errorf("Netns attachment %+v", att)
		}
		// The guard binds the source: no reverse-path lookup on the veth.
		if v, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + att.HostVeth + "/accept_local"); err != nil || strings.TrimSpace(string(v)) != "1" {
			t.Errorf("accept_local on %s: %q, %v; want 1", att.HostVeth, v, err)
		}
		if _, err := Netns(cfg, cni, rtPath, "eth1", ipRT2); !errors.Is(err, ErrContainerExists) {
			t.Errorf("Netns of an attached name: %v, want ErrContainerExists", err)
		}
		if _, err := Netns(cfg, cni2, rtPath, "eth0", ipRT2); !errors.Is(err, ErrInterfaceExists) {
			t.Errorf("Netns onto an existing interface: %v, want ErrInterfaceExists", err)
		}
		if _, err := netlink.LinkByName(HostVethName(cni2)); err == nil {
			t.Errorf("a refused Netns left veth %s behind", HostVethName(cni2))
		}
		// A second interface of the same namespace: its own table and rule.
		if _, err := Netns(cfg, cni2, rtPath, "net1", ipRT2); err != nil {
			t.Fatalf("Netns, second interface: %v", err)
		}
		for _, c := range []struct {
			name, path, ifname string
			ip                 netip.Addr
		}{{named, filepath.Join(NetnsDir, named), "eth0", ipNamed}, {cni, rtPath, "eth0", ipRT}, {cni2, rtPath, "net1", ipRT2}} {
			if err := CheckNetns(c.name, c.path, c.ifname, c.ip); err != nil {
				t.Errorf("CheckNetns %s: %v", c.name, err)
			}
		}
		if err := CheckNetns(cni, rtPath, "eth0", ipRT2); err == nil {
			t.Error("CheckNetns with another address passed")
		}

		if err := Label(named, "web"); err != nil {
			t.Fatalf("Label: %v", err)
		}
		if err := Label(cni, "db"); err != nil {
			t.Fatalf("Label: %v", err)
		}
		found, err := Find(cfg)
		if err != nil {
			t.Fatalf("Find: %v", err)
		}
		slices.SortFunc(found, func(a, b Found) int { return a.IP.Compare(b.IP) })
		want := []Found{
			{IP: ipNamed, HostVeth: HostVethName(named), App: "web", Name: named},
			{IP: ipRT, HostVeth: HostVethName(cni), App: "db", Name: cni},
			{IP: ipRT2, HostVeth: HostVethName(cni2)}, // not labelled
		}
		if !slices.Equal(found, want) {
			t.Errorf("Find = %+v, want %+v", found, want)
		}
		addrs, err := DeliveryAddrs(cfg)
		if err != nil {
			t.Fatalf("DeliveryAddrs: %v", err)
		}
		slices.SortFunc(addrs, netip.Addr.Compare)
		if !slices.Equal(addrs, []netip.Addr{ipNamed, ipRT, ipRT2}) {
			t.Errorf("DeliveryAddrs = %v", addrs)
		}

		// InContainer finds both kinds of namespace from the host veth.
		for name, ip := range map[string]netip.Addr{named: ipNamed, cni2: ipRT2} {
			var has bool
			if err := InContainer(name, func() error {
				has, err = hasAddr(ip)
				return err
			}); err != nil {
				t.Errorf("InContainer %s: %v", name, err)
			} else if !has {
				t.Errorf("InContainer %s: ran where %v is not assigned", name, ip)
			}
		}
		if has, err := hasAddr(ipNamed); err != nil || has {
			t.Errorf("after InContainer, the cell namespace has %v: %v, %v", ipNamed, has, err)
		}

		if err := DetachContainer(named); err != nil {
			t.Errorf("DetachContainer: %v", err)
		}
		for range 2 { // repeating a detach is no error
			for _, n := range []string{cni, cni2} {
				if err := DetachNetns(n); err != nil {
					t.Errorf("DetachNetns %s: %v", n, err)
				}
			}
		}
		if err := DetachContainer(named); err != nil {
			t.Errorf("DetachContainer again: %v", err)
		}
		if found, err := Find(cfg); err != nil || len(found) != 0 {
			t.Errorf("Find after detaching: %+v, %v", found, err)
		}
		if err := InContainer(named, func() error { return nil }); err == nil {
			t.Error("InContainer of a detached container succeeded")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fileExists(filepath.Join(NetnsDir, named)) {
		t.Errorf("DetachContainer left network namespace %s", named)
	}
	if !fileExists(rtPath) {
		t.Errorf("DetachNetns removed the runtime's namespace %s", runtimeNS)
	}
}

// hasAddr reports whether an interface of the calling thread's network
// namespace has ip.
func hasAddr(ip netip.Addr) (bool, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip && a.Mask.String() == net.CIDRMask(32, 32).String() {
			return true, nil
		}
	}
	return false, nil
}
