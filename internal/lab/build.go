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
