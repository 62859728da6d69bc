package overlay

import (
	"strings"
	"testing"
)

func TestDataPathOf(t *testing.T) {
	for _, tc := range []struct {
		cfg, env, want, err string
	}{
		{"", "", DataPathInline, ""},
		{DataPathQueued, "", DataPathQueued, ""},
		{DataPathInline, "", DataPathInline, ""},
		{"", DataPathQueued, DataPathQueued, ""},
		{DataPathQueued, DataPathInline, DataPathInline, ""},
		{"fast", "", "", "Config.DataPath \"fast\""},
		{"", "both", "", "WEFT_WG_DATAPATH \"both\""},
	} {
		t.Setenv(dataPathEnv, tc.env) // "" counts as unset
		got, err := dataPathOf(Config{DataPath: tc.cfg})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("cfg %q env %q: err %v, want one naming %s", tc.cfg, tc.env, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("cfg %q env %q: %q, %v; want %q", tc.cfg, tc.env, got, err, tc.want)
		}
	}
}
