// Command netfeat prints the offload features (ethtool -k) of network
// interfaces, for checking the ladder's topology where ethtool is not
// installed. Run it in a namespace with `nsenter --net=/run/netns/NS`.
//
//	netfeat [-all] IFACE...
//
// Without -all it prints only the features that matter for the data path
// (GSO/GRO/TSO/checksum/UDP segmentation), with on/off and [fixed].
package main

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	ethtoolGSTRINGS   = 0x1b
	ethtoolGSSETINFO  = 0x37
	ethtoolGFEATURES  = 0x3a
	ethSSFeatures     = 4
	ethGStringLen     = 32
	ifreqSize         = 40
	ifnamsiz          = 16
	featureBlockWords = 4 // available, requested, active, never_changed
)

func main() {
	all := flag.Bool("all", false, "print every feature")
	flag.Parse()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, ifname := range flag.Args() {
		feats, err := features(fd, ifname)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", ifname, err)
			os.Exit(1)
		}
		var out []string
		for _, f := range feats {
			if *all || interesting(f.name) {
				s := f.name + "=" + map[bool]string{true: "on", false: "off"}[f.active]
				if f.fixed {
					s += "[fixed]"
				}
				out = append(out, s)
			}
		}
		fmt.Printf("%s: %s\n", ifname, strings.Join(out, " "))
	}
}

func interesting(name string) bool {
	for _, p := range []string{"tx-checksum", "tx-generic-segmentation", "rx-gro", "tx-tcp-segmentation", "tx-tcp6-segmentation",
		"tx-udp-segmentation", "rx-udp-gro-forwarding", "rx-gro-list", "tx-scatter-gather", "rx-checksumming", "tx-udp_tnl"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

type feature struct {
	name          string
	active, fixed bool
}

func ioctl(fd int, ifname string, data unsafe.Pointer) error {
	var ifr [ifreqSize]byte
	copy(ifr[:ifnamsiz-1], ifname)
	*(*uintptr)(unsafe.Pointer(&ifr[ifnamsiz])) = uintptr(data)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	if errno != 0 {
		return errno
	}
	return nil
}

func features(fd int, ifname string) ([]feature, error) {
	// struct ethtool_sset_info { u32 cmd, reserved; u64 sset_mask; u32 data[]; }
	info := make([]byte, 20)
	binary.NativeEndian.PutUint32(info[0:], ethtoolGSSETINFO)
	binary.NativeEndian.PutUint64(info[8:], 1<<ethSSFeatures)
	if err := ioctl(fd, ifname, unsafe.Pointer(&info[0])); err != nil {
		return nil, fmt.Errorf("GSSET_INFO: %w", err)
	}
	n := int(binary.NativeEndian.Uint32(info[16:]))
	// struct ethtool_gstrings { u32 cmd, string_set, len; u8 data[]; }
	strs := make([]byte, 12+n*ethGStringLen)
	binary.NativeEndian.PutUint32(strs[0:], ethtoolGSTRINGS)
	binary.NativeEndian.PutUint32(strs[4:], ethSSFeatures)
	binary.NativeEndian.PutUint32(strs[8:], uint32(n))
	if err := ioctl(fd, ifname, unsafe.Pointer(&strs[0])); err != nil {
		return nil, fmt.Errorf("GSTRINGS: %w", err)
	}
	// struct ethtool_gfeatures { u32 cmd, size; struct { u32 available, requested, active, never_changed; } features[]; }
	blocks := (n + 31) / 32
	gf := make([]byte, 8+blocks*16)
	binary.NativeEndian.PutUint32(gf[0:], ethtoolGFEATURES)
	binary.NativeEndian.PutUint32(gf[4:], uint32(blocks))
	if err := ioctl(fd, ifname, unsafe.Pointer(&gf[0])); err != nil {
		return nil, fmt.Errorf("GFEATURES: %w", err)
	}
	var feats []feature
	for i := range n {
		name := string(bytes.TrimRight(strs[12+i*ethGStringLen:12+(i+1)*ethGStringLen], "\x00"))
		if name == "" {
			continue
		}
		blk := gf[8+(i/32)*16:]
		bit := uint32(1) << (i % 32)
		avail := binary.NativeEndian.Uint32(blk[0:])&bit != 0
		active := binary.NativeEndian.Uint32(blk[8:])&bit != 0
		never := binary.NativeEndian.Uint32(blk[12:])&bit != 0
		feats = append(feats, feature{name: name, active: active, fixed: !avail || never})
	}
	return feats, nil
}
