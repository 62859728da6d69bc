package cell

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/weft-net/weft/overlay"
)

// Cell-to-cell requests share the path MTU probe socket (pmtu.go): UDP
// between cell addresses on overlay.PMTUProbePort, through the tunnel.
// WireGuard authenticates the sending cell and its guard keeps containers
// off that address and port, so only peer cells reach it. A datagram is
// the probe header (magic, kind, nonce) and a JSON body; a request is
// answered with the same nonce. Requests are idempotent (the caller
// resends one that is not answered).
const (
	cellRequest = 3
	cellAnswer  = 4
)

// maxCellCalls bounds the requests a cell answers at once; more are
// dropped (the caller resends).
const maxCellCalls = 16

// call sends body to the cell that holds subnet and waits for its answer,
// resending every timeout up to tries times.
func (p *pmtuProber) call(ctx context.Context, subnet netip.Prefix, body []byte, timeout time.Duration, tries int) ([]byte, error) {
	to := netip.AddrPortFrom(overlay.CellAddr(subnet), overlay.PMTUProbePort)
	buf := make([]byte, pmtuHeader+len(body))
	copy(buf, pmtuMagic)
	buf[4] = cellRequest
	copy(buf[pmtuHeader:], body)
	ch := make(chan []byte, 1)
	p.mu.Lock()
	p.nonce++
	nonce := p.nonce
	p.calls[nonce] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.calls, nonce)
		p.mu.Unlock()
	}()
	binary.BigEndian.PutUint64(buf[5:], nonce)
	var err error
	for range tries {
		if _, err = p.conn.WriteToUDPAddrPort(buf, to); err != nil {
			continue
		}
		t := time.NewTimer(timeout)
		select {
		case ans := <-ch:
			t.Stop()
			return ans, nil
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	if err != nil {
		return nil, fmt.Errorf("send to %v: %w", to, err)
	}
	return nil, fmt.Errorf("no answer from %v within %d tries of %v", to, tries, timeout)
}

// handleCall is serve's part for cell-to-cell datagrams. Requests are
// answered on their own goroutine (a request may wait), at most
// maxCellCalls at once.
func (p *pmtuProber) handleCall(kind byte, nonce uint64, body []byte, from netip.AddrPort) {
	switch kind {
	case cellAnswer:
		p.mu.Lock()
		ch := p.calls[nonce]
		p.mu.Unlock()
		if ch != nil {
			select {
			case ch <- body:
			default:
			}
		}
	case cellRequest:
		if p.serveFn == nil {
			return
		}
		select {
		case p.callSem <- struct{}{}:
		default:
			return
		}
		p.wg.Go(func() {
			defer func() { <-p.callSem }()
			ans := p.serveFn(body)
			out := make([]byte, pmtuHeader+len(ans))
			copy(out, pmtuMagic)
			out[4] = cellAnswer
			binary.BigEndian.PutUint64(out[5:], nonce)
			copy(out[pmtuHeader:], ans)
			p.conn.WriteToUDPAddrPort(out, from) //nolint:errcheck // the caller resends
		})
	}
}

// cellCall sends a request to the cell that holds subnet.
func (a *Agent) cellCall(ctx context.Context, subnet netip.Prefix, body []byte, timeout time.Duration, tries int) ([]byte, error) {
	a.mu.Lock()
	pm := a.pmtu
	a.mu.Unlock()
	if pm == nil {
		return nil, errors.New("this cell has no probe socket on its cell address")
	}
	return pm.call(ctx, subnet, body, timeout, tries)
}
