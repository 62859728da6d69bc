package cell

import (
	"fmt"
	"slices"
	"strings"

	"github.com/weft-net/weft/mesh"
)

// unknownVersion stands for a member that announces no version: one older
// than the first weft that gossips it.
const unknownVersion = "unknown (older)"

// versionSkew describes the versions the live (alive or suspect) members
// run when they differ, "" when they all run one: e.g.
// "members run different versions: v1.2.0 (c1, c2); v1.3.0 (c3)".
func versionSkew(members []mesh.Node) string {
	byVersion := map[string][]string{}
	for _, m := range members {
		if m.State != mesh.NodeAlive && m.State != mesh.NodeSuspect {
			continue
		}
		v := m.Version
		if v == "" {
			v = unknownVersion
		}
		byVersion[v] = append(byVersion[v], m.Name)
	}
	if len(byVersion) < 2 {
		return ""
	}
	versions := make([]string, 0, len(byVersion))
	for v := range byVersion {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	parts := make([]string, len(versions))
	for i, v := range versions {
		names := byVersion[v]
		slices.Sort(names)
		if len(names) > 5 {
			names = append(names[:5:5], fmt.Sprintf("%d more", len(byVersion[v])-5))
		}
		parts[i] = fmt.Sprintf("%s (%s)", v, strings.Join(names, ", "))
	}
	return "members run different versions: " + strings.Join(parts, "; ")
}

// logVersionSkewLocked logs a warning when the live members start to run
// different versions (or the set of versions changes), and once when they
// agree again; skew is versionSkew's. Called by applyLocked (a.mu held)
// when skew differs from the last one logged.
func (a *Agent) logVersionSkewLocked(skew string) {
	switch {
	case skew != "":
		a.log.Warn("version skew: "+skew+"; finish the upgrade (docs/operations.md, \"Upgrading a cell\")", "version", a.cfg.Version)
	default:
		a.log.Info("all live members run one version again", "version", a.cfg.Version)
	}
	a.versionSkew = skew
}
