package bench

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/policy"
)

// BenchmarkConvergence measures the control plane alone: N mesh nodes
// (memberlist, default timings) in this process on 127.0.0.1, no lab, no
// root. Per iteration:
//
//   - policy-ms: from AddPolicy on node 0 until every node has the rule;
//   - join-ms: from mesh.New of a new node (joining a random member) until
//     every node sees its lease and its endpoint. It includes the settle of
//     the fresh lease (a gossip wait of GossipInterval × (2 + ⌈log4 N⌉),
//     400-600 ms here, then one push/pull with another member): a fresh
//     lease is not used until no older claim has turned up, so no container
//     can get an address that another cell holds. settle-ms is the time
//     from mesh.New until WaitSubnet returned; join-gossip-ms the part
//     after (the endpoint spreading);
//   - bytes/node/s: bytes every node's memberlist transport sent (UDP
//     packets and TCP push/pull streams, counted by a Transport wrapper),
//     per node and second, over the whole iteration (idle gossip, probes,
//     push/pull, and the two changes above).
//
// The N nodes are set up once per size with persisted leases (lease.json,
// as cells that restart), so setup does not wait for N lease settles.
//
//	go test -run '^$' -bench Convergence -benchtime 3x ./bench/
func BenchmarkConvergence(b *testing.B) {
	for _, n := range []int{10, 50, 200} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) { benchConvergence(b, n) })
	}
}

var benchOperator = ed25519.NewKeyFromSeed(make([]byte, 32))

// countingTransport wraps memberlist's UDP+TCP transport and counts the
// bytes sent.
type countingTransport struct {
	memberlist.Transport
	sent    *atomic.Uint64
	streams chan net.Conn
	done    chan struct{}
	stopped chan struct{} // closed when the inner transport has shut down
}

func newCountingTransport(sent *atomic.Uint64) (*countingTransport, error) {
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		Logger:    log.New(io.Discard, "", 0),
	})
	if err != nil {
		return nil, err
	}
	t := &countingTransport{Transport: nt, sent: sent, streams: make(chan net.Conn), done: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		for {
			select {
			case c := <-nt.StreamCh():
				select {
				case t.streams <- countingConn{c, sent}:
				case <-t.done:
					c.Close()
				}
			case <-t.done:
				// Keep draining until the inner transport has stopped:
				// its listener blocks on an unread accepted stream.
				for {
					select {
					case c := <-nt.StreamCh():
						c.Close()
					case <-t.stopped:
						return
					}
				}
			}
		}
	}()
	return t, nil
}

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	t.sent.Add(uint64(len(b)))
	return t.Transport.WriteTo(b, addr)
}

func (t *countingTransport) DialTimeout(addr string, d time.Duration) (net.Conn, error) {
	c, err := t.Transport.DialTimeout(addr, d)
	if err != nil {
		return nil, err
	}
	return countingConn{c, t.sent}, nil
}

func (t *countingTransport) StreamCh() <-chan net.Conn { return t.streams }

func (t *countingTransport) Shutdown() error {
	close(t.done)
	defer close(t.stopped)
	return t.Transport.Shutdown()
}

type countingConn struct {
	net.Conn
	sent *atomic.Uint64
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.sent.Add(uint64(n))
	return n, err
}

type convCluster struct {
	b     *testing.B
	dir   string
	sent  atomic.Uint64
	nodes []*mesh.Mesh
	next  int
}

var (
	convOverlay = netip.MustParsePrefix("10.128.0.0/12")
	convBits    = 24 // 4095 usable subnets: room for every joiner
)

func (c *convCluster) start(name string, join []string, lease netip.Prefix) *mesh.Mesh {
	c.b.Helper()
	dir := filepath.Join(c.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.b.Fatal(err)
	}
	if lease.IsValid() {
		data := fmt.Sprintf(`{"subnet":%q,"lease_time_unix_ns":%d}`, lease, time.Now().UnixNano())
		if err := os.WriteFile(filepath.Join(dir, "lease.json"), []byte(data), 0o600); err != nil {
			c.b.Fatal(err)
		}
	}
	tr, err := newCountingTransport(&c.sent)
	if err != nil {
		c.b.Fatal(err)
	}
	cfg := mesh.DefaultConfig()
	cfg.Name = name
	cfg.BindAddr = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Transport = tr
	cfg.Join = join
	cfg.ClusterKey = make([]byte, 32)
	cfg.StateDir = dir
	cfg.OverlayCIDR, cfg.SubnetBits = convOverlay, convBits
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.TrustedOperators = []ed25519.PublicKey{benchOperator.Public().(ed25519.PublicKey)}
	cfg.OperatorKey = benchOperator
	m, err := mesh.New(cfg, nil)
	if err != nil {
		c.b.Fatal(err)
	}
	return m
}

// subnet returns the i-th subnet of the overlay (i >= 1).
func subnet(i int) netip.Prefix {
	a := convOverlay.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(i) << (32 - convBits)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), convBits)
}

// waitAll polls cond on every node until it holds on all of them and
// returns when that happened.
func waitAll(b *testing.B, nodes []*mesh.Mesh, timeout time.Duration, what string, cond func(*mesh.Mesh) bool) time.Time {
	b.Helper()
	pending := make(map[*mesh.Mesh]bool, len(nodes))
	for _, m := range nodes {
		pending[m] = true
	}
	deadline := time.Now().Add(timeout)
	for {
		for m := range pending {
			if cond(m) {
				delete(pending, m)
			}
		}
		if len(pending) == 0 {
			return time.Now()
		}
		if time.Now().After(deadline) {
			for m := range pending {
				var odd []string
				for _, nd := range m.Members() {
					if nd.State != mesh.NodeAlive || !nd.Subnet.IsValid() {
						odd = append(odd, fmt.Sprintf("%s:%v:%v", nd.Name, nd.State, nd.Subnet))
					}
				}
				b.Logf("pending node sees %d members; not alive with a subnet: %v", len(m.Members()), odd)
				break
			}
			b.Fatalf("%s: %d of %d nodes not there after %v", what, len(pending), len(nodes), timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func benchConvergence(b *testing.B, n int) {
	c := &convCluster{b: b, dir: b.TempDir()}
	setup := time.Now()
	defer func() {
		t0 := time.Now()
		var wg sync.WaitGroup
		for _, m := range c.nodes {
			wg.Go(func() { m.Shutdown() })
		}
		wg.Wait()
		b.Logf("nodes=%d: setup %v, shutdown %v", n, time.Since(setup).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	}()
	seed := c.start("node-0", nil, subnet(1))
	c.nodes = append(c.nodes, seed)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Go(func() {
			m := c.start(fmt.Sprintf("node-%d", i), []string{seed.LocalAddr().String()}, subnet(i+1))
			mu.Lock()
			c.nodes = append(c.nodes, m)
			mu.Unlock()
		})
		if i%20 == 0 {
			wg.Wait()
		}
	}
	wg.Wait()
	waitAll(b, c.nodes, 60*time.Second, "membership", func(m *mesh.Mesh) bool {
		alive := 0
		for _, nd := range m.Members() {
			if nd.State == mesh.NodeAlive && nd.Subnet.IsValid() {
				alive++
			}
		}
		return alive == n
	})
	c.next = n + 1

	var policyMS, joinMS, settleMS, joinGossipMS, bytesRate float64
	b.ResetTimer()
	for it := range b.N {
		startBytes, start := c.sent.Load(), time.Now()

		r := policy.Rule{Source: fmt.Sprintf("src-%d", it), Destination: "dst", Protocol: policy.ProtoTCP,
			Ports: policy.PortRange{Start: 8080, End: 8080}}
		t0 := time.Now()
		if _, err := c.nodes[0].AddPolicy(r); err != nil {
			b.Fatal(err)
		}
		t1 := waitAll(b, c.nodes, 30*time.Second, "policy", func(m *mesh.Mesh) bool { return m.PolicyStamp(r) != 0 })
		policyMS += float64(t1.Sub(t0)) / 1e6

		name := fmt.Sprintf("node-%d", c.next)
		c.next++
		t0 = time.Now()
		seedOf := c.nodes[(it*7919)%len(c.nodes)]
		nm := c.start(name, []string{seedOf.LocalAddr().String()}, netip.Prefix{})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		sub, err := nm.WaitSubnet(ctx)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		ip := sub.Addr().Next().Next()
		tSettled := time.Now()
		if err := nm.AddEndpoint(mesh.Endpoint{IP: ip, App: "app", Name: "ctr"}); err != nil {
			b.Fatal(err)
		}
		all := append(c.nodes[:len(c.nodes):len(c.nodes)], nm)
		t1 = waitAll(b, all, 30*time.Second, "join", func(m *mesh.Mesh) bool {
			leased := false
			for _, nd := range m.Members() {
				if nd.Name == name && nd.Subnet == sub {
					leased = true
				}
			}
			if !leased {
				return false
			}
			for _, e := range m.Endpoints() {
				if e.IP == ip && e.Cell == name {
					return true
				}
			}
			return false
		})
		joinMS += float64(t1.Sub(t0)) / 1e6
		settleMS += float64(tSettled.Sub(t0)) / 1e6
		joinGossipMS += float64(t1.Sub(tSettled)) / 1e6
		bytesRate += float64(c.sent.Load()-startBytes) / float64(len(all)) / time.Since(start).Seconds()
		c.nodes = append(c.nodes, nm)
	}
	b.StopTimer()
	k := float64(b.N)
	b.ReportMetric(policyMS/k, "policy-ms")
	b.ReportMetric(joinMS/k, "join-ms")
	b.ReportMetric(settleMS/k, "settle-ms")
	b.ReportMetric(joinGossipMS/k, "join-gossip-ms")
	b.ReportMetric(bytesRate/k, "bytes/node/s")
}
