// Package buildinfo says which weft this binary is: `weft version`, the
// weft_build_info metric, and the version each cell gossips in its node
// metadata.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// version is set at link time by the Makefile:
//
//	go build -ldflags "-X github.com/weft-net/weft/internal/buildinfo.version=$(git describe --always --dirty)"
//
// Empty (a plain `go build` or `go install`): Version falls back to what
// the Go toolchain recorded in the binary.
var version string

// Version is the version of this binary: the link-time version if set,
// else the module version the toolchain stamped (a tag, or a pseudo-version
// with the commit), else the VCS revision ("-dirty" with uncommitted
// changes), else "devel".
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// GoVersion is the Go toolchain that built this binary ("go1.26.0").
func GoVersion() string { return runtime.Version() }
