package mesh

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestVersionGossiped: each cell sees the version every other cell
// announces in its node metadata, with its feature bits.
func TestVersionGossiped(t *testing.T) {
	a := startNode(t, "cell-a", nodeOpts{mutate: func(c *Config) { c.Version = "v1.0.0" }})
	b := startNode(t, "cell-b", nodeOpts{join: a.joinAddr(), mutate: func(c *Config) { c.Version = "v1.1.0-3-gabc\x1b[31m" }})
	b.SetFeatures(FeatPartialTCPChecksum)
	want := map[string]string{"cell-a": "v1.0.0", "cell-b": "v1.1.0-3-gabc?[31m"}
	eventually(t, 5*time.Second, "versions gossiped", func() error {
		for _, m := range []*Mesh{a, b} {
			got := map[string]string{}
			for _, n := range m.Members() {
				got[n.Name] = n.Version
				if n.Name == "cell-b" && n.Features != FeatPartialTCPChecksum {
					return fmt.Errorf("%s sees cell-b's features %v", m.cfg.Name, n.Features)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("%s sees versions %v, want %v", m.cfg.Name, got, want)
			}
		}
		return nil
	})
}

// TestMetaCompat: metadata of a cell older than the version field still
// parses (no version), and a version is bounded.
func TestMetaCompat(t *testing.T) {
	old := []byte(`{"k":"` + wgKey("x") + `","p":51820,"s":"10.255.3.0/24","t":1733400000000000000,"f":1}`)
	nm := parseMeta(old)
	if nm.Key != wgKey("x") || nm.Port != 51820 || nm.Subnet != netip.MustParsePrefix("10.255.3.0/24") || nm.Feat != FeatPartialTCPChecksum || nm.Ver != "" {
		t.Fatalf("old metadata parsed as %+v", nm)
	}
	long := parseMeta([]byte(`{"v":"` + strings.Repeat("9", 300) + `"}`))
	if len(long.Ver) != MaxVersionLen {
		t.Fatalf("a 300-byte version was kept as %d bytes, want %d", len(long.Ver), MaxVersionLen)
	}
}

// TestNodeMetaBounded: the largest metadata this version can announce
// (an IPv6-sized subnet, every feature bit, a version cut to the maximum
// length) fits memberlist's 512 bytes with room to spare.
func TestNodeMetaBounded(t *testing.T) {
	m := startNode(t, "cell-m", nodeOpts{mutate: func(c *Config) { c.Version = strings.Repeat("v", 500) }})
	if len(m.cfg.Version) != MaxVersionLen {
		t.Fatalf("Config.Version kept %d bytes", len(m.cfg.Version))
	}
	if nm := parseMeta((*delegate)(m).NodeMeta(512)); nm.Ver != m.cfg.Version {
		t.Fatalf("NodeMeta announces version %q, want %q", nm.Ver, m.cfg.Version)
	}
	largest := nodeMeta{Key: wgKey("x"), Port: 65535, Subnet: netip.MustParsePrefix("fd00:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"),
		Time: 1 << 62, Over: 1 << 62, Feat: ^Features(0), Ver: m.cfg.Version}
	b, _ := json.Marshal(largest)
	if len(b) > 384 {
		t.Fatalf("largest metadata is %d bytes: %s", len(b), b)
	}
}

func TestFeatureNames(t *testing.T) {
	if got := fmt.Sprint(Features(0).Names()); got != "[]" {
		t.Errorf("no features: %s", got)
	}
	if got := fmt.Sprint((FeatPartialTCPChecksum | 1<<5).Names()); got != "[partial_tcp_checksum bit5]" {
		t.Errorf("names: %s", got)
	}
}
