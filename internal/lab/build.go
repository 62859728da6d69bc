package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildWeft builds the weft binary into dir and returns its path. Tests and
// benchmarks call it from TestMain so that `go test` alone is enough.
func BuildWeft(dir string) (string, error) {
	bin := filepath.Join(dir, "weft")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/weft-net/weft/cmd/weft")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build weft: %w", err)
	}
	return bin, nil
}

// RunWithWeft is TestMain for packages that use the lab: it builds weft
// into a temporary directory, sets *bin to it, runs the tests and removes
// the binary. It returns the exit code for os.Exit.
func RunWithWeft(m interface{ Run() int }, bin *string) int {
	dir, err := os.MkdirTemp("", "weft-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *bin, err = BuildWeft(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
