package overlay

import (
	"bytes"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The guard's drops by interface: beside its named counter, every drop or
// refusal updates an element of the dynamic set "drops", keyed by the
// container's host veth and the reason, with a counter of its own:
//
//	set drops { type ifname . integer; flags dynamic,timeout; timeout 1h; size 65536 }
//	... update @drops { iifname . 1 counter } counter spoofed drop
//	... update @drops { oifname . 5 counter } counter ingress reject   # to the container
//
// The veth is the container's, so the agent names its app (cell/metrics_guard.go).
// An element that sees no drop for guardDropsIdle expires; a full set
// stops adding elements (the named counters still count). The set holds
// at most one element per container and reason.

// dropsSetName names the set.
const dropsSetName = "drops"

// guardDropsIdle is how long an element lives after its last drop.
const guardDropsIdle = time.Hour

// guardDropsMax bounds the set.
const guardDropsMax = 65536

// dropReasons are the reasons the set counts, by their key in it.
var dropReasons = [...]string{1: GuardSpoofed, 2: GuardToCell, 3: GuardNotIPv4, 4: GuardEgress, 5: GuardIngress}

func dropReasonKey(reason string) uint32 {
	for k, r := range dropReasons {
		if r == reason && r != "" {
			return uint32(k)
		}
	}
	panic("guard: no drop reason " + reason)
}

func (g *guard) dropsSet() *nftables.Set {
	return &nftables.Set{Table: g.table, Name: dropsSetName,
		KeyType:       nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeInteger),
		Concatenation: true, Dynamic: true, HasTimeout: true, Timeout: guardDropsIdle, Size: guardDropsMax}
}

// countByVeth updates the drops element of the interface that meta key
// names (MetaKeyIIFNAME: the packet came from a container; MetaKeyOIFNAME:
// it goes to one) and reason.
func countByVeth(key expr.MetaKey, reason string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 8},
		&expr.Immediate{Register: 12, Data: []byte{0, 0, 0, byte(dropReasonKey(reason))}},
		&expr.Dynset{SrcRegKey: 8, SetName: dropsSetName, Operation: uint32(unix.NFT_DYNSET_OP_UPDATE),
			Timeout: guardDropsIdle, Exprs: []expr.Any{&expr.Counter{}}},
	}
}

// VethDrops is the guard's drops of one container's host veth, by reason.
type VethDrops struct {
	Veth   string
	Reason string // GuardSpoofed, GuardToCell, GuardNotIPv4, GuardEgress, GuardIngress
	// Packets since the element was made (its first drop after it expired,
	// or after the table was built).
	Packets uint64
}

// DropsByVeth reads the set's elements.
func (g *guard) DropsByVeth() ([]VethDrops, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	els, err := c.GetSetElements(g.dropsSet())
	if err != nil {
		return nil, fmt.Errorf("nftables: set %s: %w", dropsSetName, err)
	}
	out := make([]VethDrops, 0, len(els))
	for _, e := range els {
		if len(e.Key) < unix.IFNAMSIZ+4 || e.Counter == nil {
			continue
		}
		k := int(e.Key[unix.IFNAMSIZ+3])
		if k >= len(dropReasons) || dropReasons[k] == "" {
			continue
		}
		out = append(out, VethDrops{Veth: string(bytes.TrimRight(e.Key[:unix.IFNAMSIZ], "\x00")), Reason: dropReasons[k], Packets: e.Counter.Packets})
	}
	return out, nil
}
