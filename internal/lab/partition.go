package lab

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"

	"github.com/vishvananda/netlink"
)

var cellName = regexp.MustCompile(`^[A-Za-z0-9-]{1,63}$`)

// CellOpts are the options of AddCellWith.
type CellOpts struct {
	// Name is the agent's --name; empty: "c<i>".
	Name string
	// NoStart creates and initialises the cell but starts no agent (start
	// it with StartCell, e.g. after Partition put it on a side).
	NoStart bool
}

// AddCellWith is AddCell with options.
func (l *Lab) AddCellWith(o CellOpts) (*Cell, error) {
	if o.Name != "" && !cellName.MatchString(o.Name) {
		return nil, fmt.Errorf("lab: cell name %q: want 1-63 letters, digits or '-'", o.Name)
	}
	c, err := l.newCellOf(o.Name)
	if err != nil {
		return c, err
	}
	if o.NoStart {
		return c, l.initCell(c)
	}
	if err := l.initCell(c); err != nil {
		return c, err
	}
	return c, l.StartCell(c.Index)
}

// Partition splits the underlay in two: the bridge ports of the given
// cells move to a second bridge (made on first use), so that those cells
// reach each other but not the cells left on the first bridge. It may be
// called again to move more cells (one added meanwhile: AddCellWith puts a
// new cell on the first bridge). Cells started while the underlay is split
// join cells on their own side (see joinsFor). Heal joins the halves
// again; Close removes the second bridge with the underlay namespace.
func (l *Lab) Partition(cells ...int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ports []string
	for _, i := range cells {
		if i < 1 || i > len(l.Cells) {
			return fmt.Errorf("lab: Partition: no cell %d (have 1..%d)", i, len(l.Cells))
		}
		ports = append(ports, l.Cells[i-1].bridgeLink)
	}
	err := withHandle(l.Underlay, func(h *netlink.Handle) error {
		br2, err := h.LinkByName(l.bridge2())
		if err != nil {
			b := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: l.bridge2()}}
			if err := h.LinkAdd(b); err != nil {
				return fmt.Errorf("add bridge %s: %w", l.bridge2(), err)
			}
			if err := h.LinkSetUp(b); err != nil {
				return err
			}
			if br2, err = h.LinkByName(l.bridge2()); err != nil {
				return err
			}
		}
		return setMaster(h, ports, br2)
	})
	if err != nil {
		return err
	}
	if l.side == nil {
		l.side = map[int]bool{}
	}
	for _, i := range cells {
		l.side[i] = true
	}
	l.cfg.Logf("lab: underlay split: cells %v on the second bridge", slices.Sorted(maps.Keys(l.side)))
	return nil
}

// Heal moves every cell's port back to the first bridge and deletes the
// second. Without a partition it does nothing.
func (l *Lab) Heal() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.side == nil {
		return nil
	}
	var ports []string
	for i := range l.side {
		ports = append(ports, l.Cells[i-1].bridgeLink)
	}
	err := withHandle(l.Underlay, func(h *netlink.Handle) error {
		br, err := h.LinkByName(l.bridge)
		if err != nil {
			return err
		}
		if err := setMaster(h, ports, br); err != nil {
			return err
		}
		br2, err := h.LinkByName(l.bridge2())
		if err != nil {
			return err
		}
		return h.LinkDel(br2)
	})
	if err != nil {
		return err
	}
	l.side = nil
	l.cfg.Logf("lab: underlay healed")
	return nil
}

// sameSide reports whether cells a and b share a bridge.
func (l *Lab) sameSide(a, b *Cell) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.side[a.Index] == l.side[b.Index]
}

func (l *Lab) bridge2() string { return l.bridge + "2" }

// setMaster attaches the named links to bridge br.
func setMaster(h *netlink.Handle, names []string, br netlink.Link) error {
	var errs []error
	for _, n := range names {
		link, err := h.LinkByName(n)
		if err == nil {
			err = h.LinkSetMaster(link, br)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("port %s to bridge %s: %w", n, br.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}
