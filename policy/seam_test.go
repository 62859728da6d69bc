package policy

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const (
	module = "github.com/weft-net/weft"
	engine = module + "/policy/engine"
)

// goList runs `go list ARGS` and returns the fields of its output.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	out, err := exec.Command(goTool, append([]string{"list"}, args...)...).Output()
	if err != nil {
		var stderr []byte
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return strings.Fields(string(out))
}

// deps lists pkg and every package it links (`go list -deps`).
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	d := goList(t, "-deps", "-f", "{{.ImportPath}}", pkg)
	if len(d) == 0 || d[len(d)-1] != pkg {
		t.Fatalf("go list -deps %s listed %d packages, not ending with %s: %q", pkg, len(d), pkg, d)
	}
	return d
}

// TestRulesApartFromEngine: the packages that only handle rules (the mesh
// replicates them, the CLI reads and writes policy files, the CNI plugin
// and the API client name apps) do not link the engine; the agent alone
// does (docs/architecture.md, "Packages"). The CLI's own files (package
// cmd/weft, whose `weft agent` starts the agent through cell) import
// policy, never the engine.
func TestRulesApartFromEngine(t *testing.T) {
	if d := deps(t, module+"/cell"); !slices.Contains(d, engine) {
		t.Fatalf("go list -deps names no %s for the agent: the check below would pass for nothing", engine)
	}
	for _, pkg := range []string{module + "/policy", module + "/mesh", module + "/cellapi", module + "/cmd/weft-cni"} {
		if slices.Contains(deps(t, pkg), engine) {
			t.Errorf("%s links %s; it needs the rules (package policy) only", pkg, engine)
		}
	}
	cli := module + "/cmd/weft"
	imports := goList(t, "-f", "{{join .Imports \" \"}} {{join .TestImports \" \"}}", cli)
	if !slices.Contains(imports, module+"/policy") {
		t.Fatalf("%s imports no %s/policy: the check below would pass for nothing (imports %q)", cli, module, imports)
	}
	if slices.Contains(imports, engine) {
		t.Errorf("%s imports %s; the CLI handles rules (package policy), the agent (package cell) the engine", cli, engine)
	}
}
