package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestVersionPrefersLinkTimeValue(t *testing.T) {
	old := version
	t.Cleanup(func() { version = old })
	version = "v1.2.3-4-gabcdef0-dirty"
	if got := Version(); got != version {
		t.Fatalf("Version() = %q, want the -ldflags value %q", got, version)
	}
	version = ""
	if got := Version(); got == "" {
		t.Fatal("Version() is empty without -ldflags")
	}
}

func TestFromBuildInfo(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tc := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"tagged module", debug.BuildInfo{Main: debug.Module{Version: "v0.3.0"}}, "v0.3.0"},
		{"devel with vcs", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("0123456789abcdef0123", "false")}, "0123456789ab"},
		{"dirty tree", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("0123456789abcdef0123", "true")}, "0123456789ab-dirty"},
		{"nothing known", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
	} {
		if got := fromBuildInfo(&tc.bi); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
