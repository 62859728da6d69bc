package attach

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
		{"weft:app=web,name=weft/ctr-1/net1", HostVethName("weft/ctr-1/net1"), "web", "weft/ctr-1/net1", true},
		{"weft:app=web,name=weft/ctr-1/net1", veth, "", "", false},
		{"weft:app=web,name=weft/ctr-1/a/b", HostVethName("weft/ctr-1/a/b"), "", "", false},
	} {
		app, gotID, ok := parseLabel(c.alias, c.veth)
		if app != c.app || gotID != c.id || ok != c.ok {
			t.Errorf("parseLabel(%q, %s) = %q %q %v, want %q %q %v", c.alias, c.veth, app, gotID, ok, c.app, c.id, c.ok)
		}
	}
}

func TestLabelTooLong(t *testing.T) {
	err := Label(strings.Repeat("c", 200), strings.Repeat("a", 128))
	if !errors.Is(err, ErrLabelTooLong) {
		t.Fatalf("Label of a 345-byte label: %v, want ErrLabelTooLong", err)
	}
}

func TestAttachmentName(t *testing.T) {
	name, err := AttachmentName("weft", "ctr-1", "net1")
	if err != nil || name != "weft/ctr-1/net1" {
		t.Fatalf("AttachmentName = %q, %v", name, err)
	}
	if n, id, ifn, ok := ParseAttachmentName(name); !ok || n != "weft" || id != "ctr-1" || ifn != "net1" {
		t.Fatalf("ParseAttachmentName(%q) = %q %q %q %v", name, n, id, ifn, ok)
	}
	for _, bad := range [][3]string{
		{"", "ctr", "eth0"}, {"we/ft", "ctr", "eth0"}, {"weft", "c/tr", "eth0"}, {"weft", "ctr", "e/th0"},
		{"weft", "ctr", "eth0:1"}, {"weft", strings.Repeat("c", 250), "eth0"},
	} {
		if name, err := AttachmentName(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("AttachmentName%q = %q, want an error", bad, name)
		}
	}
	for _, other := range []string{"ctr-1", "weft/ctr-1", "weft/ctr-1/net1/x", "/ctr/eth0", "weft//eth0"} {
		if _, _, _, ok := ParseAttachmentName(other); ok {
			t.Errorf("ParseAttachmentName(%q) ok", other)
		}
	}
}
