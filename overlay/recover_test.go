package overlay

import (
	"errors"
	"strings"
	"testing"
)

func TestParseLabel(t *testing.T) {
	id := "ctr-1"
	veth := HostVethName(id)
	for _, c := range []struct {
		alias, veth string
		app, id     string
		ok          bool
	}{
		{"weft:app=web,name=ctr-1", veth, "web", "ctr-1", true},
		{"weft:app=web,name=ctr-1", HostVethName("other"), "", "", false}, // label of another container
		{"weft:app=,name=ctr-1", veth, "", "", false},
		{"weft:app=web", veth, "", "", false},
		{"app=web,name=ctr-1", veth, "", "", false},
		{"", veth, "", "", false},
		{"weft:app=web,name=bad/id", HostVethName("bad/id"), "", "", false},
	} {
		app, gotID, ok := parseLabel(c.alias, c.veth)
		if app != c.app || gotID != c.id || ok != c.ok {
			t.Errorf("parseLabel(%q, %s) = %q %q %v, want %q %q %v", c.alias, c.veth, app, gotID, ok, c.app, c.id, c.ok)
		}
	}
}

func TestLabelTooLong(t *testing.T) {
	o := &Overlay{}
	err := o.LabelAttachment(strings.Repeat("c", 200), strings.Repeat("a", 128))
	if !errors.Is(err, ErrLabelTooLong) {
		t.Fatalf("LabelAttachment of a 345-byte label: %v, want ErrLabelTooLong", err)
	}
}
