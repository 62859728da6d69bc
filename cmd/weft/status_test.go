package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cellapi"
)

// serveAPI serves h as the agent's API on a unix socket and points
// --socket at it.
func serveAPI(t *testing.T, h http.Handler) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	socketPath = sock
}

// execCmd runs c with args under a root command and returns what it wrote
// to stdout and stderr, and its error.
func execCmd(t *testing.T, c *cobra.Command, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "weft", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(c)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{c.Name()}, args...))
	err := root.Execute()
	return out.String(), err
}

// TestStatusShowsVersions: `weft status` prints this cell's version and
// readiness, each member's version and features ("unknown (older)" for a
// member that announces none) and the agent's version warning.
func TestStatusShowsVersions(t *testing.T) {
	st := cellapi.Status{
		Name: "c1", Version: "v1.3.0", Subnet: "10.255.1.0/24", Ready: true,
		VersionWarning: "members run different versions: unknown (older) (c3); v1.2.0 (c2); v1.3.0 (c1)",
		Members: []cellapi.Member{
			{Name: "c1", Addr: "198.18.0.11", State: "alive", Subnet: "10.255.1.0/24", Self: true, Version: "v1.3.0", Features: []string{"partial_tcp_checksum"}},
			{Name: "c2", Addr: "198.18.0.12", State: "alive", Subnet: "10.255.2.0/24", Version: "v1.2.0"},
			{Name: "c3", Addr: "198.18.0.13", State: "alive", Subnet: "10.255.3.0/24"},
		},
		MemberCounts: map[string]int{"alive": 3},
	}
	serveAPI(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(st)
	}))
	out, err := execCmd(t, statusCmd())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"version:    v1.3.0\n",
		"ready:      yes\n",
		"warning:    members run different versions: unknown (older) (c3); v1.2.0 (c2); v1.3.0 (c1)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			rows[f[0]] = f
		}
	}
	if got := strings.Join(rows["member"], " "); got != "member address state subnet version features" {
		t.Errorf("member header %q", got)
	}
	for name, want := range map[string]string{
		"c1": "v1.3.0 partial_tcp_checksum", "c2": "v1.2.0 -", "c3": "unknown (older) -",
	} {
		if got := strings.Join(rows[name][4:], " "); got != want {
			t.Errorf("member %s: version and features %q, want %q", name, got, want)
		}
	}
}
