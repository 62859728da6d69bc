package store

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestNoMembership: the store and its tests link neither memberlist nor
// package mesh, which uses the store (docs/architecture.md, "Packages"):
// the replicated state is tested on its own.
func TestNoMembership(t *testing.T) {
	goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
	if err != nil {
		t.Fatalf("the go command is needed to list the store's dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-test", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		var stderr []byte
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps -test .: %v\n%s", err, stderr)
	}
	deps := strings.Fields(string(out))
	if !strings.Contains(string(out), "github.com/weft-net/weft/mesh/store") {
		t.Fatalf("go list -deps -test . did not list the store: %q", deps)
	}
	for _, dep := range deps {
		if dep == "github.com/weft-net/weft/mesh" || strings.HasPrefix(dep, "github.com/hashicorp/memberlist") {
			t.Errorf("the store (or its tests) links %s", dep)
		}
	}
}
