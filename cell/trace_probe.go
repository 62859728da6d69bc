package cell

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/policy"
)

// Outcomes of a probe, as the source container sees them.
const (
	outcomeAnswered = iota + 1 // TCP handshake completed, a UDP datagram or an echo reply came back
	outcomeRefused             // TCP RST, or ICMP port/host unreachable
	outcomeSilent              // nothing came back in time
)

// How long a probe waits for an answer.
const (
	probeTCPWait = 2 * time.Second
	probeUDPWait = time.Second
)

type probeOutcome struct {
	kind   int
	detail string
	err    error // the probe could not be sent
}

// sendProbe sends p from inside its container's network namespace and
// waits for what comes back.
func sendProbe(p *liveProbe) probeOutcome {
	var out probeOutcome
	err := attach.InContainer(p.container, func() error {
		switch p.proto {
		case policy.ProtoTCP:
			out = probeTCP(p)
		case policy.ProtoUDP:
			out = probeUDP(p)
		default:
			out = probeICMP(p)
		}
		return nil
	})
	if err != nil {
		return probeOutcome{err: err}
	}
	return out
}

// freebind lets a probe bind and send from a spoofed source address that
// is not the container's: IP_FREEBIND for the bind, IP_TRANSPARENT for the
// route lookup (which otherwise wants a local source; needs CAP_NET_ADMIN).
func freebind(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1),
			unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1))
	}); err != nil {
		return err
	}
	return serr
}

func (p *liveProbe) dialer(local net.Addr, timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout, LocalAddr: local}
	if p.spoofed {
		d.Control = freebind
	}
	return d
}

func probeTCP(p *liveProbe) probeOutcome {
	d := p.dialer(&net.TCPAddr{IP: p.src.AsSlice(), Port: int(p.sport)}, probeTCPWait)
	c, err := d.Dial("tcp4", fmt.Sprintf("%v:%d", p.dst, p.dport))
	if err == nil {
		c.Close()
		return probeOutcome{kind: outcomeAnswered, detail: fmt.Sprintf("port %d accepted the connection", p.dport)}
	}
	return classify(err, probeTCPWait)
}

func probeUDP(p *liveProbe) probeOutcome {
	d := p.dialer(&net.UDPAddr{IP: p.src.AsSlice(), Port: int(p.sport)}, probeUDPWait)
	c, err := d.Dial("udp4", fmt.Sprintf("%v:%d", p.dst, p.dport))
	if err != nil {
		return probeOutcome{err: err}
	}
	defer c.Close()
	if _, err := c.Write([]byte("weft trace probe " + p.id + "\n")); err != nil {
		return probeOutcome{err: err}
	}
	c.SetReadDeadline(time.Now().Add(probeUDPWait))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err == nil {
		return probeOutcome{kind: outcomeAnswered, detail: fmt.Sprintf("a %d-byte datagram came back", n)}
	}
	return classify(err, probeUDPWait)
}

// probeICMP sends one echo request (identifier p.sport) on a raw socket
// and waits for its reply or an error about it.
func probeICMP(p *liveProbe) probeOutcome {
	c, err := net.ListenPacket("ip4:icmp", p.src.String())
	if err != nil {
		return probeOutcome{err: fmt.Errorf("raw ICMP socket (needs CAP_NET_RAW): %w", err)}
	}
	defer c.Close()
	msg := []byte{8, 0, 0, 0, 0, 0, 0, 1}
	binary.BigEndian.PutUint16(msg[4:], p.sport)
	msg = append(msg, "weft trace probe "+p.id...)
	binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: p.dst.AsSlice()}); err != nil {
		return probeOutcome{err: err}
	}
	deadline := time.Now().Add(probeUDPWait)
	c.SetReadDeadline(deadline)
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return classify(err, probeUDPWait)
		}
		m := buf[:n]
		switch {
		case n >= 8 && m[0] == 0 && binary.BigEndian.Uint16(m[4:]) == p.sport:
			return probeOutcome{kind: outcomeAnswered, detail: "an echo reply came back"}
		case n >= 8+20+8 && m[0] == 3 && binary.BigEndian.Uint16(m[8+20+4:]) == p.sport:
			return probeOutcome{kind: outcomeRefused, detail: fmt.Sprintf("ICMP destination unreachable (code %d)", m[1])}
		}
	}
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// classify turns a socket error into an outcome.
func classify(err error, wait time.Duration) probeOutcome {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return probeOutcome{kind: outcomeRefused, detail: "connection refused (TCP RST or ICMP port-unreachable)"}
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return probeOutcome{kind: outcomeRefused, detail: "host unreachable (ICMP)"}
	case errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return probeOutcome{kind: outcomeSilent, detail: fmt.Sprintf("no answer within %v", wait)}
	}
	return probeOutcome{err: err}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
