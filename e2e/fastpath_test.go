package e2e

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lab"
)

// TestFastPathTTL: between containers on two cells, a small datagram
// leaves its cell by the fast path (overlay/fastpath_linux.go), which
// does not forward it, and arrives with its TTL one less (the receiving
// cell forwards it to the veth); a datagram longer than MinPathMTU takes
// both cells' IP stacks, two less.
func TestFastPathTTL(t *testing.T) {
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin})
	a, b := l.Name("appA"), l.Name("appB")
	if _, err := l.CreateContainer(1, "appA", a); err != nil {
		t.Fatal(err)
	}
	ipB, err := l.CreateContainer(2, "appB", b)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := lab.ListenPacketIn(b, "udp4", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	uc := pc.(*net.UDPConn)
	rc, err := uc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTTL, 1) })
	if serr != nil {
		t.Fatal(serr)
	}
	weft(t, l, 1, "add-network-policy", "appA", "appB", "--protocol", "udp", "--port", "7000")

	c, err := lab.DialIn(a, "udp4", netip.AddrPortFrom(ipB, 7000).String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// ttlOf sends datagrams of size bytes until one arrives (the policy
	// reaches cell 2 asynchronously) and returns its TTL.
	ttlOf := func(size int) int {
		t.Helper()
		buf, oob := make([]byte, 2048), make([]byte, 128)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := c.Write(make([]byte, size)); err != nil {
				t.Fatalf("send %d bytes: %v", size, err)
			}
			uc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, oobn, _, _, err := uc.ReadMsgUDP(buf, oob)
			if err != nil || n != size {
				continue
			}
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TTL && len(m.Data) >= 1 {
					return int(m.Data[0])
				}
			}
			t.Fatal("no IP_TTL control message")
		}
		t.Fatalf("no %d-byte datagram from appA to appB within 10 s", size)
		return 0
	}
	if ttl := ttlOf(32); ttl != 63 {
		t.Errorf("small datagram arrived with TTL %d, want 63 (sent 64; only the receiving cell forwards it)", ttl)
	}
	if ttl := ttlOf(1000); ttl != 62 {
		t.Errorf("1000-byte datagram arrived with TTL %d, want 62 (both cells forward it)", ttl)
	}
}
