package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lab"
)

// peerPathMTU is what cell i's status says of the path MTU to its one peer.
func peerPathMTU(st lab.Status) (mtu int, state string) {
	if len(st.Peers) != 1 {
		return 0, ""
	}
	var p struct {
		MTU   int    `json:"path_mtu"`
		State string `json:"path_mtu_state"`
	}
	json.Unmarshal(st.Peers[0].Raw, &p)
	return p.MTU, p.State
}

// TestPathMTU: the underlay between two cells is narrowed to 1280 bytes by
// a router that sends no ICMP (lab.NarrowPath), while both cells' own
// links stay at 1500 and their overlay MTU at 1420. Both cells find the
// narrower path by probing (1216 inside WireGuard) and show it
// in status and trace; 10 MB TCP transfers both ways complete within their
// deadline (the MSS clamp and the route MTU: nothing larger is sent); and a
// container sending a 1400-byte UDP datagram with DF is told by its cell
// with ICMP "fragmentation needed" (the kernel then refuses larger
// datagrams with EMSGSIZE and reports the path MTU) instead of the datagram
// vanishing in the underlay.
func TestPathMTU(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.Setup(t, lab.Config{Cells: 2, WeftBin: weftBin,
		AgentArgs: []string{"--metrics-addr", fmt.Sprintf(":%d", metricsPort)}})
	ctA, ctB := l.Name("pmtuA"), l.Name("pmtuB")
	ipA := createContainer(t, l, 1, "pmtua", ctA)
	ipB := createContainer(t, l, 2, "pmtub", ctB)
	for _, p := range [][2]string{{"pmtua", "pmtub"}, {"pmtub", "pmtua"}} {
		weft(t, l, 1, "add-network-policy", p[0], p[1], "--protocol", "tcp", "--port", "9000")
	}
	weft(t, l, 1, "add-network-policy", "pmtua", "pmtub", "--protocol", "udp", "--port", "9001")

	for i := 1; i <= 2; i++ {
		waitStatus(t, l, i, 20*time.Second, "path MTU 1420 (the overlay's) to the peer", func(st lab.Status) bool {
			mtu, state := peerPathMTU(st)
			return mtu == 1420 && state == "ok"
		})
	}

	if err := l.NarrowPath(2, 1280); err != nil {
		t.Fatal(err)
	}
	// 1280 - 60 bytes of WireGuard over IPv4, but WireGuard pads what it
	// encrypts to a multiple of 16 bytes: 1216 is the largest inner
	// packet whose datagram fits 1280 (1217-1220 are padded to 1232).
	const want = (1280 - 60) &^ 15
	for i := 1; i <= 2; i++ {
		d := waitStatus(t, l, i, 45*time.Second, "path MTU 1216 to the peer", func(st lab.Status) bool {
			mtu, state := peerPathMTU(st)
			return mtu == want && state == "reduced"
		})
		t.Logf("cell %d found path MTU %d in %v", i, want, d.Round(time.Millisecond))
	}
	samples, text := scrape(t, l, 1, 1)
	var got float64
	for k, v := range samples {
		if strings.HasPrefix(k, `weft_peer_path_mtu{peer="c2",`) {
			got = v
		}
	}
	if got != want {
		t.Errorf("weft_peer_path_mtu of c2 on cell 1 is %v, want %d\n%s", got, want, grep(text, "weft_peer_path_mtu"))
	}
	if out := weft(t, l, 1, "status"); !strings.Contains(out, strconv.Itoa(want)+" (reduced)") {
		t.Errorf("weft status on cell 1 does not show the reduced path MTU:\n%s", out)
	}
	res := traceJSON(t, l, 1, "pmtua", "pmtub", "--protocol", "tcp", "--port", "9000")
	if s := traceStep(res, "mtu"); res.PathMTU != want || !strings.Contains(s.Detail, "path to cell c2 1216") {
		t.Errorf("trace: path MTU %d, mtu step %+v; want %d", res.PathMTU, s, want)
	}
	t.Logf("$ weft trace pmtua pmtub --protocol tcp --port 9000 (path narrowed to 1280)\n%s",
		weft(t, l, 1, "trace", "pmtua", "pmtub", "--protocol", "tcp", "--port", "9000"))

	// The SYN-ACK was clamped by cell 2's guard: the client's MSS fits
	// the path before any ICMP (1216 - 40 bytes of headers, less 12 of
	// TCP timestamps).
	if mss := clientMSS(t, ctA, ctB, netip.AddrPortFrom(ipB, 9000)); mss > want-40 {
		t.Errorf("MSS of a new connection %s -> %v is %d, want at most %d (clamped to the path)", ctA, ipB, mss, want-40)
	}
	bulk(t, ctA, ctB, netip.AddrPortFrom(ipB, 9000), 10<<20)
	bulk(t, ctB, ctA, netip.AddrPortFrom(ipA, 9000), 10<<20)

	udpTooBig(t, ctA, netip.AddrPortFrom(ipB, 9001), want)
}

// udpTooBig sends 1400-byte UDP datagrams with DF (IP_PMTUDISC_DO) from
// namespace ns to dst until the kernel refuses one with EMSGSIZE (it
// learned the path MTU from an ICMP "fragmentation needed"), and checks
// the MTU it learned.
func udpTooBig(t *testing.T, ns string, dst netip.AddrPort, want int) {
	t.Helper()
	c, err := lab.DialIn(ns, "udp", dst.String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	sockopt := func(f func(fd int) error) error {
		var ferr error
		if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
			return err
		}
		return ferr
	}
	if err := sockopt(func(fd int) error {
		return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	}); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 1400-28)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Write(payload)
		if errors.Is(err, unix.EMSGSIZE) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("1400-byte UDP datagrams with DF from %s to %v: no EMSGSIZE in 5 s (last error %v): no ICMP fragmentation-needed reached the sender", ns, dst, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var mtu int
	if err := sockopt(func(fd int) (err error) {
		mtu, err = unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if mtu != want {
		t.Errorf("%s: path MTU to %v learned from ICMP is %d, want %d", ns, dst, mtu, want)
	}
	t.Logf("%s: 1400-byte UDP with DF to %v refused with EMSGSIZE, path MTU %d", ns, dst, mtu)
}

// clientMSS opens a TCP connection from namespace client to a listener at
// dst in namespace server and returns the client's MSS (TCP_MAXSEG) before
// any data was sent.
func clientMSS(t *testing.T, client, server string, dst netip.AddrPort) int {
	t.Helper()
	ln, err := lab.ListenIn(server, "tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := lab.DialIn(client, "tcp", dst.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mss int
	var serr error
	raw.Control(func(fd uintptr) { mss, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) })
	if serr != nil {
		t.Fatal(serr)
	}
	t.Logf("%s -> %v: MSS %d", client, dst, mss)
	return mss
}
