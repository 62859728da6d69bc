package main

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cellapi"
)

// complete runs cobra's hidden __complete command, as a shell's completion
// script does, and returns the candidates it printed (the last line is the
// directive).
func complete(t *testing.T, args ...string) []string {
	t.Helper()
	root := &cobra.Command{Use: "weft", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(addPolicyCmd(), removePolicyCmd(), listPoliciesCmd(), traceCmd())
	var out strings.Builder
	root.SetOut(&out)
	root.SetErr(&strings.Builder{})
	root.SetArgs(append([]string{cobra.ShellCompRequestCmd}, args...))
	if err := root.Execute(); err != nil {
		t.Fatalf("__complete %v: %v", args, err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if !strings.HasPrefix(lines[len(lines)-1], ":") {
		t.Fatalf("__complete %v: no directive line in %q", args, out.String())
	}
	var got []string
	for _, l := range lines[:len(lines)-1] {
		got = append(got, strings.SplitN(l, "\t", 2)[0])
	}
	return got
}

// TestCompleteApps: app names complete from GET /v1/apps; the destination
// after -s/-o completes among that space's apps; no agent: no candidates.
func TestCompleteApps(t *testing.T) {
	serveAPI(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/apps" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(cellapi.AppList{Apps: []string{"acme/dev/db", "acme/prod/db", "acme/prod/web", "backend", "frontend"}})
	}))
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"add-network-policy", ""}, []string{"acme/dev/db", "acme/prod/db", "acme/prod/web", "backend", "frontend"}},
		{[]string{"add-network-policy", "f"}, []string{"frontend"}},
		{[]string{"add-network-policy", "frontend", "b"}, []string{"backend"}},
		{[]string{"add-network-policy", "frontend", "-s", "prod", "-o", "acme", ""}, []string{"db", "web"}},
		{[]string{"remove-network-policy", "frontend", "acme/p"}, []string{"acme/prod/db", "acme/prod/web"}},
		{[]string{"add-network-policy", "a", "b", ""}, nil},
		{[]string{"network-policies", "--source", "ba"}, []string{"backend"}},
		{[]string{"trace", "fr"}, []string{"frontend"}},
	} {
		if got := complete(t, tc.args...); !slices.Equal(got, tc.want) {
			t.Errorf("complete %q: %q, want %q", tc.args, got, tc.want)
		}
	}
	socketPath = "/nonexistent/weft.sock"
	if got := complete(t, "add-network-policy", ""); len(got) != 0 {
		t.Errorf("without an agent: %q", got)
	}
}
