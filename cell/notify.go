package cell

import (
	"fmt"
	"net"
	"net/netip"
	"os"
)

// sdNotify sends state (e.g. "READY=1") to the service manager over the
// datagram socket named by $NOTIFY_SOCKET, as sd_notify(3) does; a name
// starting with '@' is in the abstract namespace. Without $NOTIFY_SOCKET
// (not started by systemd with Type=notify) it does nothing and reports
// false.
func sdNotify(state string) (bool, error) {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return false, nil
	}
	if name[0] == '@' {
		name = "\x00" + name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("NOTIFY_SOCKET %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("NOTIFY_SOCKET %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	return true, nil
}

// notify tells the service manager state; a failure is logged, never
// fatal (the agent works the same without a service manager).
func (a *Agent) notify(state string) {
	if _, err := sdNotify(state); err != nil {
		a.log.Warn("tell systemd the agent's state", "state", state, "err", err)
	}
}

// notifyReady tells the service manager (Type=notify) that the agent is
// ready: it holds subnet and its data plane is up, as /readyz says.
func (a *Agent) notifyReady(subnet netip.Prefix) {
	a.notify(fmt.Sprintf("READY=1\nSTATUS=serving subnet %s", subnet))
}
