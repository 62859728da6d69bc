// plainwg is a module of its own so that rung (b) runs upstream wireguard-go,
// not weft's patched copy (third_party/wireguard-go, WEFT-PATCHES.md).
module github.com/weft-net/weft/bench/internal/plainwg

go 1.26.0

require (
	github.com/vishvananda/netlink v1.3.1
	golang.zx2c4.com/wireguard v0.0.0-20260522210424-ecfc5a8d5446
)

require (
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/crypto v0.57.0 // indirect
	golang.org/x/net v0.59.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.zx2c4.com/wintun v0.0.0-20230126152724-0fa3db229ce2 // indirect
)
