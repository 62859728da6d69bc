package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cellapi"
)

// parseAgent parses args with `weft agent`'s flags and applies --config as
// PreRunE would, returning the flags' values.
func parseAgent(t *testing.T, file string, args ...string) (*cobra.Command, error) {
	t.Helper()
	c := agentCmd()
	root := &cobra.Command{Use: "weft"}
	root.PersistentFlags().StringVar(&socketPath, "socket", cellapi.DefaultSocket, "")
	root.AddCommand(c)
	if file != "" {
		p := filepath.Join(t.TempDir(), "agent.yaml")
		if err := os.WriteFile(p, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", p)
	}
	if err := c.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	c.InheritedFlags() // merge the persistent --socket
	return c, c.PreRunE(c, nil)
}

func TestConfigFile(t *testing.T) {
	c, err := parseAgent(t, "name: cell1\nbind: 10.0.0.1:7946\njoin: [10.0.0.2:7946, 10.0.0.3:7946]\nmtu: 1400\nsocket: /tmp/x.sock\n",
		"--name", "fromflag")
	if err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return c.Flags().Lookup(name).Value.String() }
	if get("name") != "fromflag" {
		t.Errorf("name = %q: the command line must win over the file", get("name"))
	}
	if get("bind") != "10.0.0.1:7946" || get("mtu") != "1400" || get("socket") != "/tmp/x.sock" {
		t.Errorf("bind %q mtu %q socket %q: not taken from the file", get("bind"), get("mtu"), get("socket"))
	}
	if get("join") != "[10.0.0.2:7946,10.0.0.3:7946]" {
		t.Errorf("join = %q", get("join"))
	}
}

func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"name: a\nfrobnicate: 1\n", `agent.yaml:2: unknown key "frobnicate"`},
		{"name: a\nmtu: big\n", `agent.yaml:2: mtu: invalid argument "big"`},
		{"name: [a, b]\n", "agent.yaml:1: name takes one value"},
		{"name: a\nname: b\n", `agent.yaml:2: key "name" given twice`},
		{"- a\n- b\n", "agent.yaml:1: want a mapping"},
		{"config: other.yaml\n", `unknown key "config"`},
		{"name: [a\n", "agent.yaml"},
	} {
		_, err := parseAgent(t, tc.file)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("file %q: error %v, want it to contain %q", tc.file, err, tc.want)
		}
	}
}

func TestCompletionWords(t *testing.T) {
	root := &cobra.Command{Use: "weft"}
	root.AddCommand(addPolicyCmd(), statusCmd())
	addCompletions(root)
	add, _, err := root.Find([]string{"add-network-policy"})
	if err != nil {
		t.Fatal(err)
	}
	fn, ok := add.GetFlagCompletionFunc("protocol")
	if !ok {
		t.Fatal("no completion for --protocol")
	}
	words, _ := fn(add, nil, "")
	if strings.Join(words, " ") != "tcp udp icmp all" {
		t.Errorf("--protocol completes %v", words)
	}
}

// An IPv6 overlay is refused with a clear error before the agent starts
// (before any lease, TUN or route): the data plane is IPv4 only.
func TestAgentRefusesIPv6Overlay(t *testing.T) {
	c, err := parseAgent(t, "", "--name", "c1", "--state-dir", t.TempDir(), "--bind", "127.0.0.1:0",
		"--overlay-cidr", "fd00:10::/16", "--subnet-prefix", "24")
	if err != nil {
		t.Fatal(err)
	}
	err = c.RunE(c, nil)
	if err == nil || !strings.Contains(err.Error(), "--overlay-cidr fd00:10::/16: IPv6 overlays are not supported yet") {
		t.Fatalf("agent with an IPv6 overlay: %v", err)
	}
}
