package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/weft-net/weft/cell"
)

// The agent's config file (`weft agent --config FILE`, deploy/agent.yaml has
// an example) is a YAML mapping whose keys are the agent's flag names:
//
//	name: cell1
//	state-dir: /var/lib/weft
//	bind: 10.0.0.1:7946
//	join: [10.0.0.2:7946, 10.0.0.3:7946]
//	metrics-addr: 10.0.0.1:9465
//
// A flag given on the command line overrides the file's key. An unknown key,
// or a value the flag does not accept, is an error naming the file and line.

// notInFile are the flags a config file cannot set.
var notInFile = map[string]bool{"config": true, "help": true}

// applyConfigFile sets every flag of cmd that path names and the command
// line did not set. An empty path does nothing.
func applyConfigFile(cmd *cobra.Command, path string) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil // empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("%s:%d: want a mapping of flag names to values", path, root.Line)
	}
	flags := cmd.Flags()
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		f := flags.Lookup(k.Value)
		if f == nil || notInFile[k.Value] {
			return fmt.Errorf("%s:%d: unknown key %q (the keys are the flags of `weft agent`, e.g. name, state-dir, bind, join)", path, k.Line, k.Value)
		}
		if line, dup := seen[k.Value]; dup {
			return fmt.Errorf("%s:%d: key %q given twice (first on line %d)", path, k.Line, k.Value, line)
		}
		seen[k.Value] = k.Line
		if flags.Changed(k.Value) {
			continue // the command line wins
		}
		var values []string
		switch v.Kind {
		case yaml.ScalarNode:
			values = []string{v.Value}
		case yaml.SequenceNode:
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					return fmt.Errorf("%s:%d: %s: want a list of plain values", path, item.Line, k.Value)
				}
				values = append(values, item.Value)
			}
			if len(values) > 1 && f.Value.Type() != "stringArray" && f.Value.Type() != "stringSlice" {
				return fmt.Errorf("%s:%d: %s takes one value, not a list", path, v.Line, k.Value)
			}
		default:
			return fmt.Errorf("%s:%d: %s: want a value or a list of values", path, v.Line, k.Value)
		}
		for _, s := range values {
			if err := flags.Set(k.Value, s); err != nil {
				return fmt.Errorf("%s:%d: %s: %w", path, v.Line, k.Value, err)
			}
		}
	}
	return nil
}

// newLogger returns the agent's logger: slog text (the default) or JSON
// lines on w. It also becomes slog's default, so every package logs alike.
func newLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch format {
	case "text", "":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	l := slog.New(h)
	slog.SetDefault(l)
	return l, nil
}

// agentExtraFlags adds the flags of `weft agent` that this file serves:
// --config, --log-format, --metrics-addr, and flag completions.
func agentExtraFlags(c *cobra.Command, cfg *cell.Config, configFile, logFormat *string) {
	f := c.Flags()
	f.StringVar(configFile, "config", "", "YAML file of flag values (keys are flag names); flags on the command line override it")
	f.StringVar(logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on http://IP:PORT/metrics (off when empty)")
	c.PreRunE = func(cmd *cobra.Command, _ []string) error { return applyConfigFile(cmd, *configFile) }
	c.MarkFlagFilename("config", "yaml", "yml")
	c.MarkFlagDirname("state-dir")
}

// flagWords are the values shell completion offers for flags of these
// names, on every command that has one.
var flagWords = map[string][]string{
	"protocol":    {"tcp", "udp", "icmp", "all"},
	"output":      {"table", "json"},
	"log-format":  {"text", "json"},
	"log-level":   {"debug", "info", "warn", "error"},
	"policy":      {"on", "off"},
	"tun-backend": {"auto", "wireguard", "water"},
}

// addCompletions registers flag value completions on cmd and its
// subcommands (`weft completion bash|zsh|fish|powershell` prints the
// scripts; cobra adds that command).
func addCompletions(cmd *cobra.Command) {
	for name, words := range flagWords {
		if cmd.LocalFlags().Lookup(name) == nil {
			continue
		}
		cmd.RegisterFlagCompletionFunc(name, func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return words, cobra.ShellCompDirectiveNoFileComp
		})
	}
	for _, sub := range cmd.Commands() {
		addCompletions(sub)
	}
}
