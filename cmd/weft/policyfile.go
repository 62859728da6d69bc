package main

import (
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/policy"
)

func policyCmd() *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "push or export the whole policy set as a file"}
	var dryRun bool
	push := &cobra.Command{
		Use:   "push FILE [--dry-run]",
		Short: "make the policy set equal to FILE (YAML or CF policy-server JSON), printing the +/- diff",
		Long: `Make the policy set equal to FILE, a YAML file

  policies:
    - {source: appA, destination: appB, protocol: tcp, ports: "8080"}

or Cloud Foundry's policy-server v1 JSON. The whole file is checked before
anything changes: a bad file changes nothing and its error names the line or
entry and the field.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			want, err := policy.ParseFile(args[0], data)
			if err != nil {
				return err
			}
			have, err := currentRules()
			if err != nil {
				return err
			}
			d := policy.DiffRules(have, want)
			out := cmd.OutOrStdout()
			for _, r := range d.Remove {
				fmt.Fprintf(out, "- %s\n", r)
			}
			for _, r := range d.Add {
				fmt.Fprintf(out, "+ %s\n", r)
			}
			if dryRun {
				fmt.Fprintf(out, "dry run: %d to add, %d to remove, nothing changed\n", len(d.Add), len(d.Remove))
				return nil
			}
			if err := applyDiff(d); err != nil {
				return err
			}
			fmt.Fprintf(out, "%d added, %d removed, %d policies now\n", len(d.Add), len(d.Remove), len(want))
			return nil
		},
	}
	push.Flags().BoolVar(&dryRun, "dry-run", false, "print the diff, change nothing")
	operatorKeyFlag(push)

	var format string
	export := &cobra.Command{
		Use:   "export [--format yaml|cf-json]",
		Short: "print the whole policy set as a file that `weft policy push` takes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rules, err := currentRules()
			if err != nil {
				return err
			}
			var b []byte
			switch format {
			case "yaml":
				b, err = policy.MarshalYAML(rules)
			case "cf-json":
				b, err = policy.MarshalCFJSON(rules)
			default:
				return fmt.Errorf("--format %q: want yaml or cf-json", format)
			}
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	export.Flags().StringVar(&format, "format", "yaml", "yaml or cf-json")
	c.AddCommand(push, export)
	return c
}

// currentRules is the agent's policy set.
func currentRules() ([]policy.Rule, error) {
	prs, err := client().Policies(ctx(), "")
	if err != nil {
		return nil, err
	}
	rules := make([]policy.Rule, 0, len(prs))
	for _, pr := range prs {
		r, err := pr.Rule()
		if err != nil {
			return nil, fmt.Errorf("agent listed an invalid policy %+v: %w", pr, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// pushBatch is how many signed changes go to the agent in one request
// (about 3.5 MB of JSON; the agent takes up to 16 MiB). The agent writes
// state.json and recompiles its table once per request, each a pass over
// the whole set: with 1000 a push of 100k rules made 100 of each.
const pushBatch = 10000

// applyDiff makes the changes of d: signed here with the operator key and
// sent in batches, or, without a key, one by one for the agent to sign.
func applyDiff(d policy.Diff) error {
	type change struct {
		rule    policy.Rule
		present bool
	}
	var all []change
	for _, r := range d.Remove {
		all = append(all, change{r, false})
	}
	for _, r := range d.Add {
		all = append(all, change{r, true})
	}
	priv, err := signer()
	if err != nil {
		return err
	}
	if priv == nil {
		for _, c := range all {
			if err := changePolicy(cell.FromRule(c.rule), c.present); err != nil {
				return fmt.Errorf("%s: %w", c.rule, err)
			}
		}
		return nil
	}
	origin := cell.CLIOrigin()
	for start := 0; start < len(all); start += pushBatch {
		batch := all[start:min(start+pushBatch, len(all))]
		signed := make([]cell.SignedPolicyChange, len(batch))
		for i, c := range batch {
			signed[i] = cell.SignPolicyChange(c.rule, c.present, origin, 0, priv)
		}
		results, err := client().ApplyPolicyChanges(ctx(), signed)
		if err != nil {
			return err
		}
		for i, res := range results {
			switch {
			case res.Code == http.StatusConflict:
				// The agent holds a newer stamp for this rule (our
				// clock is behind): SignedPolicy re-signs above it.
				if _, err := client().SignedPolicy(ctx(), priv, cell.FromRule(batch[i].rule), batch[i].present); err != nil {
					return fmt.Errorf("%s: %w", batch[i].rule, err)
				}
			case res.Code >= 400 && res.Code != http.StatusNotFound:
				return fmt.Errorf("%s: %s", batch[i].rule, res.Error)
			}
		}
	}
	return nil
}

func enforcementCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "policy-enforcement on|off|status",
		Short: "switch this cell's policy enforcement (off: every packet passes, until on again or the agent restarts)",
		Long: `Switch policy enforcement on this cell only. Off, the data path passes every
packet, as with 'weft agent --policy=off': use it to find out whether the
policy is what breaks an application, and switch it on again. On again,
every flow is judged against the rules on its next packet. The switch is
not persisted (a restarted agent enforces again); while it is off the agent
warns once a minute and the metric weft_policy_enforced is 0.`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"on", "off", "status"},
		RunE: func(cmd *cobra.Command, args []string) error {
			var st cell.EnforcementState
			var err error
			switch args[0] {
			case "on", "off":
				st, err = client().SetPolicyEnforcement(ctx(), args[0] == "on")
			case "status":
				st, err = client().PolicyEnforcement(ctx())
			default:
				return fmt.Errorf("policy-enforcement %q: want on, off or status", args[0])
			}
			if err != nil {
				return err
			}
			state := "on"
			if !st.Enabled {
				state = "OFF: every packet passes"
			}
			if !st.Since.IsZero() {
				state += fmt.Sprintf(" (since %s, %s ago)", st.Since.UTC().Format(time.RFC3339), since(st.Since))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "policy enforcement: %s\n", state)
			return nil
		},
	}
}

func flowLogsCmd() *cobra.Command {
	return &cobra.Command{
		Use:       "flow-logs on|off|status",
		Short:     "switch the agent's flow logs (JSON lines for denied packets and new allowed flows)",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"on", "off", "status"},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "on", "off":
				if err := client().SetFlowLogs(ctx(), args[0] == "on"); err != nil {
					return err
				}
			case "status":
			default:
				return fmt.Errorf("flow-logs %q: want on, off or status", args[0])
			}
			on, err := client().FlowLogs(ctx())
			if err != nil {
				return err
			}
			state := "off"
			if on {
				state = "on"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "flow logs: %s\n", state)
			return nil
		},
	}
}
