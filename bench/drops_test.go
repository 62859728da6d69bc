package bench

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

var ladderDrops = flag.Bool("ladder.drops", false, "log, for the UDP tests, where packets went in every namespace of the lab: UDP datagrams in and their receive-buffer drops, and each interface's packets and drops (/proc/net/snmp and /proc/net/dev)")

// nsCounters are one namespace's counters of interest, by name.
type nsCounters map[string]uint64

// snapshotCounters reads the UDP and per-interface counters of every
// namespace whose name starts with prefix.
func snapshotCounters(b *testing.B, prefix string) map[string]nsCounters {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		b.Logf("-ladder.drops: %v", err)
		return nil
	}
	out := map[string]nsCounters{}
	for _, e := range ents {
		ns := e.Name()
		if !strings.HasPrefix(ns, prefix) {
			continue
		}
		c := nsCounters{}
		err := lab.InNetns(ns, func() error {
			snmp, err := os.ReadFile("/proc/thread-self/net/snmp")
			if err != nil {
				return err
			}
			var names []string
			for _, line := range strings.Split(string(snmp), "\n") {
				f := strings.Fields(line)
				if len(f) == 0 || f[0] != "Udp:" {
					continue
				}
				if names == nil {
					names = f
					continue
				}
				for i := 1; i < len(f) && i < len(names); i++ {
					switch names[i] {
					case "InDatagrams", "OutDatagrams", "RcvbufErrors", "SndbufErrors", "InErrors", "NoPorts":
						v, _ := strconv.ParseUint(f[i], 10, 64)
						c["udp."+names[i]] = v
					}
				}
				break
			}
			dev, err := os.ReadFile("/proc/thread-self/net/dev")
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(dev), "\n")[2:] {
				name, rest, ok := strings.Cut(line, ":")
				if !ok {
					continue
				}
				name = strings.TrimSpace(name)
				f := strings.Fields(rest)
				if len(f) < 12 || name == "lo" {
					continue
				}
				for i, k := range map[int]string{1: "rx", 3: "rxdrop", 9: "tx", 11: "txdrop"} {
					v, _ := strconv.ParseUint(f[i], 10, 64)
					c[name+"."+k] = v
				}
			}
			return nil
		})
		if err != nil {
			b.Logf("-ladder.drops: %s: %v", ns, err)
			continue
		}
		out[ns] = c
	}
	return out
}

// logCounterRates logs the non-zero per-second changes between two
// snapshots, one line per namespace.
func logCounterRates(b *testing.B, what string, before, after map[string]nsCounters, d time.Duration) {
	var nss []string
	for ns := range after {
		nss = append(nss, ns)
	}
	sort.Strings(nss)
	for _, ns := range nss {
		var parts []string
		var keys []string
		for k := range after[ns] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if delta := after[ns][k] - before[ns][k]; delta > 0 {
				parts = append(parts, fmt.Sprintf("%s %.1fk/s", k, float64(delta)/d.Seconds()/1e3))
			}
		}
		if len(parts) > 0 {
			b.Logf("-ladder.drops %s %s: %s", what, ns, strings.Join(parts, ", "))
		}
	}
}
