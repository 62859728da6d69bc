package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// InNetns runs fn with its OS thread in the named namespace (a name under
// /run/netns, e.g. a cell's Netns or a container name). Sockets fn
// creates stay in that namespace after InNetns returns, so create them in
// fn and use them anywhere. fn runs on a goroutine of its own with a
// locked thread; the caller's thread and the rest of the process never
// change namespace. If the thread cannot return to its original namespace
// it is discarded. fn should only create sockets or do other short work:
// goroutines it starts do not inherit the namespace. A panic in fn is
// re-raised in the caller.
func InNetns(name string, fn func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("lab: open netns %s: %w", name, err)
	}
	defer target.Close()
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("lab: current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("lab: enter netns %s: %w", name, err)}
			return
		}
		var res result
		func() {
			defer func() { res.panic = recover() }()
			res.err = fn()
		}()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime ends it with this goroutine.
			done <- result{err: fmt.Errorf("lab: leave netns %s: %w", name, err), panic: res.panic}
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panic != nil {
		panic(res.panic)
	}
	return res.err
}

// DialIn dials addr from namespace ns. Use an IP literal: a host name
// with several addresses is dialled from helper goroutines, outside ns.
func DialIn(ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	return DialContextIn(context.Background(), ns, network, addr, timeout)
}

// DialContextIn is DialIn with a context.
func DialContextIn(ctx context.Context, ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := InNetns(ns, func() error {
		var err error
		d := net.Dialer{Timeout: timeout}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// ListenIn listens on addr in namespace ns.
func ListenIn(ns, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := InNetns(ns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacketIn opens a packet socket on addr in namespace ns.
func ListenPacketIn(ns, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := InNetns(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// HTTPGetIn GETs url from namespace ns (no keep-alive) and returns the
// status code and body (at most 1 MiB).
func HTTPGetIn(ns, url string, timeout time.Duration) (status int, body string, err error) {
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			Proxy:             nil, // never a proxy from the environment
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return DialContextIn(ctx, ns, network, addr, timeout)
			},
		},
	}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// IsConnRefused reports whether err is "connection refused" (a TCP RST or
// an ICMP port unreachable answered the connection attempt).
func IsConnRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// ExecIn returns a command that runs name in namespace ns via
// `nsenter --net=/run/netns/ns` (which execs: the child is the command).
// Only the network namespace changes, so namespaces the command mounts
// under /run/netns stay visible to everyone.
func ExecIn(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", nsenterArgs(ns, name, args)...)
}

func nsenterArgs(ns, name string, args []string) []string {
	return append([]string{"--net=" + filepath.Join(netnsDir, ns), "--", name}, args...)
}
