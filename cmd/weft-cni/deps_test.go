package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// notLinked are the packages the plugin must not link: the agent and its
// mesh, overlay and DNS, memberlist, wireguard-go and netlink. The plugin
// reaches the agent through cellapi alone (docs/architecture.md,
// "Packages"); a binary that a container runtime starts for every
// container stays small and does not carry the data plane.
var notLinked = []string{
	"github.com/weft-net/weft/cell",
	"github.com/weft-net/weft/mesh",
	"github.com/weft-net/weft/overlay",
	"github.com/weft-net/weft/discovery",
	"github.com/hashicorp/memberlist",
	"golang.zx2c4.com/wireguard",
	"github.com/vishvananda/netlink",
	"github.com/mdlayher/netlink",
}

// TestLinksOnlyTheClient: `go list -deps` of this command names none of
// notLinked (nor a package below one of them).
func TestLinksOnlyTheClient(t *testing.T) {
	goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
	if err != nil {
		t.Fatalf("the go command is needed to list the plugin's dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		var stderr []byte
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps .: %v\n%s", err, stderr)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 || deps[len(deps)-1] != "github.com/weft-net/weft/cmd/weft-cni" {
		t.Fatalf("go list -deps . listed %d packages, not ending with the plugin: %q", len(deps), deps)
	}
	for _, dep := range deps {
		for _, bad := range notLinked {
			if dep == bad || strings.HasPrefix(dep, bad+"/") {
				t.Errorf("weft-cni links %s (forbidden: %s); import github.com/weft-net/weft/cellapi, not the agent", dep, bad)
			}
		}
	}
}
