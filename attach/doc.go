// Package attach connects containers' network namespaces to the cell: it
// makes (or is given) a container's network namespace, creates the veth
// pair between it and the cell, moves one end in, configures the
// addresses, routes and static neighbour entries on both ends, labels the
// cell end, finds attachments again from the kernel, enters a container's
// namespace to run code there, and removes it all.
//
// It is plumbing only: what may cross the veth (the guard's nftables
// table) and where packets go after it (weft0, WireGuard) are package
// overlay's, which calls this one with its [Config]; drift repair of the
// cell end (overlay/drift_linux.go) uses [GatewayAddr] and
// [ContainerRoute] so that it puts back exactly what an attach made.
//
// Every function works from the cell's network namespace (the calling
// thread's) through netlink handles bound to the container's, and may be
// called concurrently for different containers.
package attach
