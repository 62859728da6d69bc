package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// TestVersionLdflags builds weft as the Makefile does, with the version
// set at link time, and runs `weft version`.
func TestVersionLdflags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the weft binary")
	}
	bin := filepath.Join(t.TempDir(), "weft")
	const v = "v9.8.7-6-gabcdef0-dirty"
	build := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X github.com/weft-net/weft/internal/buildinfo.version="+v, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("weft version: %v\n%s", err, out)
	}
	want := "weft " + v + " (" + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + ")\n"
	if string(out) != want {
		t.Fatalf("weft version printed %q, want %q", out, want)
	}
}
