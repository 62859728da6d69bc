package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/policy"
)

func policyCmd() *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "push or export the whole policy set as a file"}
	var dryRun, allowLarge bool
	push := &cobra.Command{
		Use:   "push FILE [--dry-run] [--allow-large-removal]",
		Short: "make the policy set (and the egress and ingress rules the file lists) equal to FILE, printing the +/- diff",
		Long: `Make the policy set equal to FILE, a YAML file

  policies:
    - {source: appA, destination: appB, protocol: tcp, ports: "8080"}
  egress:        # optional: without it the egress rules stay as they are
    - {app: appA, destination: 10.0.11.0/24, protocol: tcp, ports: "443"}
    - {app: "*", destination: 0.0.0.0-9.255.255.255, protocol: all}
  ingress:       # optional, the same way
    - {app: appB, source: host, protocol: tcp, ports: "8080"}   # the cell hosts
    - {app: appB, source: 198.18.0.0/24, protocol: tcp, ports: "8080"}

or Cloud Foundry's policy-server v1 JSON (network policies only). Only
"policies: []" (JSON: {"policies": []}) means no policies: an empty file or
a null or missing "policies" is an error; "egress: []" means no egress
rules, "ingress: []" no ingress rules. The whole file is checked before anything changes: a bad file
changes nothing and its error names the line or entry and the field. The
changes are applied as one batch: no cell ever holds part of them. A push
that removes more than half of the policies, egress and ingress rules (the
only one included) needs --allow-large-removal.`,
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
			overlay, err := agentOverlay()
			if err != nil {
				return err
			}
			egWant, egGiven, err := policy.ParseEgressYAML(args[0], data, overlay)
			if err != nil {
				return err
			}
			inWant, inGiven, err := policy.ParseIngressYAML(args[0], data, overlay)
			if err != nil {
				return err
			}
			have, err := currentRules()
			if err != nil {
				return err
			}
			egHave, err := currentEgress()
			if err != nil {
				return err
			}
			inHave, err := currentIngress()
			if err != nil {
				return err
			}
			d := policy.DiffRules(have, want)
			var eg edgeDiff
			if egGiven {
				eg.add, eg.remove = policy.DiffEgress(egHave, egWant)
			}
			if inGiven {
				eg.inAdd, eg.inRemove = policy.DiffIngress(inHave, inWant)
			}
			out := cmd.OutOrStdout()
			for _, r := range d.Remove {
				fmt.Fprintf(out, "- %s\n", r)
			}
			for _, r := range eg.remove {
				fmt.Fprintf(out, "- egress %s\n", r)
			}
			for _, r := range eg.inRemove {
				fmt.Fprintf(out, "- ingress %s\n", r)
			}
			for _, r := range d.Add {
				fmt.Fprintf(out, "+ %s\n", r)
			}
			for _, r := range eg.add {
				fmt.Fprintf(out, "+ egress %s\n", r)
				for _, w := range r.Warnings(overlay) {
					fmt.Fprintln(out, "  warning:", w)
				}
			}
			for _, r := range eg.inAdd {
				fmt.Fprintf(out, "+ ingress %s\n", r)
			}
			removals := len(d.Remove) + len(eg.remove) + len(eg.inRemove)
			current := len(have) + len(egHave) + len(inHave)
			added := len(d.Add) + len(eg.add) + len(eg.inAdd)
			large := cellapi.LargeRemoval(removals, current) && !allowLarge
			if dryRun {
				fmt.Fprintf(out, "dry run: %d to add, %d to remove, nothing changed\n", added, removals)
				if large {
					fmt.Fprintf(out, "the push would be refused: %s\n", cellapi.LargeRemovalError(removals, current))
				}
				return nil
			}
			if large {
				return errors.New(cellapi.LargeRemovalError(removals, current))
			}
			if err := applyDiff(d, eg, allowLarge); err != nil {
				return err
			}
			fmt.Fprintf(out, "%d added, %d removed, %d policies now", added, removals, len(want))
			if egGiven {
				fmt.Fprintf(out, ", %d egress rules", len(egWant))
			}
			if inGiven {
				fmt.Fprintf(out, ", %d ingress rules", len(inWant))
			}
			fmt.Fprintln(out)
			return nil
		},
	}
	push.Flags().BoolVar(&dryRun, "dry-run", false, "print the diff, change nothing")
	push.Flags().BoolVar(&allowLarge, "allow-large-removal", false, "allow a push that removes more than half of the policies")
	operatorKeyFlag(push)

	var format string
	export := &cobra.Command{
		Use:   "export [--format yaml|cf-json]",
		Short: "print the whole policy set (yaml: and the egress and ingress rules) as a file that `weft policy push` takes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rules, err := currentRules()
			if err != nil {
				return err
			}
			egress, err := currentEgress()
			if err != nil {
				return err
			}
			ingress, err := currentIngress()
			if err != nil {
				return err
			}
			var b []byte
			switch format {
			case "yaml":
				// No list for none: a push of the file leaves those rules alone.
				if len(egress) == 0 {
					egress = nil
				}
				if len(ingress) == 0 {
					ingress = nil
				}
				b, err = policy.MarshalYAMLFile(rules, egress, ingress)
			case "cf-json":
				b, err = policy.MarshalCFJSON(rules)
				for _, left := range []struct {
					n    int
					what string
				}{{len(egress), "egress"}, {len(ingress), "ingress"}} {
					if left.n > 0 {
						fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d %s rules left out: cf-json holds network policies only (use --format yaml)\n", left.n, left.what)
					}
				}
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

// pushBatch is how many changes go to the agent in one request (signed,
// about 3.5 MB of JSON; the agent takes up to 16 MiB). The agent applies
// each request as one batch, writes state.json and recompiles its table
// once per request, each a pass over the whole set: with 1000 a push of
// 100k rules made 100 of each.
const pushBatch = 10000

// edgeDiff is what a push changes in the egress and ingress rules.
type edgeDiff struct {
	add, remove     []policy.EgressRule
	inAdd, inRemove []policy.IngressRule
}

// currentEgress is the agent's egress rule set.
func currentEgress() ([]policy.EgressRule, error) {
	ers, err := client().EgressRules(ctx())
	if err != nil {
		return nil, err
	}
	out := make([]policy.EgressRule, 0, len(ers))
	for _, e := range ers {
		r, err := e.Rule(netip.Prefix{})
		if err != nil {
			return nil, fmt.Errorf("agent listed an invalid egress rule %+v: %w", e, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// currentIngress is the agent's ingress rule set.
func currentIngress() ([]policy.IngressRule, error) {
	irs, err := client().IngressRules(ctx())
	if err != nil {
		return nil, err
	}
	out := make([]policy.IngressRule, 0, len(irs))
	for _, e := range irs {
		r, err := e.Rule(netip.Prefix{})
		if err != nil {
			return nil, fmt.Errorf("agent listed an invalid ingress rule %+v: %w", e, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// agentOverlay is the overlay CIDR of the local agent, for checking egress
// rules against it before anything is sent (invalid from an agent that
// does not say: it checks them itself).
func agentOverlay() (netip.Prefix, error) {
	st, err := client().Status(ctx())
	if err != nil {
		return netip.Prefix{}, err
	}
	if st.Overlay == "" {
		return netip.Prefix{}, nil
	}
	return netip.ParsePrefix(st.Overlay)
}

// policyChange is one change of a push: an app rule, an egress rule
// (isEgress) or an ingress rule (isIngress).
type policyChange struct {
	rule      policy.Rule
	egress    policy.EgressRule
	ingress   policy.IngressRule
	isEgress  bool
	isIngress bool
	present   bool
}

func (c policyChange) String() string {
	switch {
	case c.isEgress:
		return "egress rule " + c.egress.String()
	case c.isIngress:
		return "ingress rule " + c.ingress.String()
	}
	return c.rule.String()
}

// applyDiff makes the changes of d and eg, signed here with the operator
// key or, without one, by the agent, sent as one request of at most
// pushBatch changes, which the agent applies as one batch. A larger diff
// goes in several, additions first: in between, the set holds both the
// rules removed and those added, never neither.
func applyDiff(d policy.Diff, eg edgeDiff, allowLarge bool) error {
	var all []policyChange
	for _, r := range d.Add {
		all = append(all, policyChange{rule: r, present: true})
	}
	for _, r := range eg.add {
		all = append(all, policyChange{egress: r, isEgress: true, present: true})
	}
	for _, r := range eg.inAdd {
		all = append(all, policyChange{ingress: r, isIngress: true, present: true})
	}
	for _, r := range d.Remove {
		all = append(all, policyChange{rule: r})
	}
	for _, r := range eg.remove {
		all = append(all, policyChange{egress: r, isEgress: true})
	}
	for _, r := range eg.inRemove {
		all = append(all, policyChange{ingress: r, isIngress: true})
	}
	return pushChanges(all, allowLarge)
}

// pushChanges sends changes as push batches (see applyDiff).
func pushChanges(all []policyChange, allowLarge bool) error {
	priv, err := signer()
	if err != nil {
		return err
	}
	origin := cellapi.CLIOrigin()
	sign := func(c policyChange, above uint64) cellapi.SignedPolicyChange {
		switch {
		case c.isEgress && priv == nil: // the agent signs
			e := cellapi.FromEgressRule(c.egress)
			return cellapi.SignedPolicyChange{Egress: &e, Present: c.present}
		case c.isEgress:
			return cell.SignEgressChange(c.egress, c.present, origin, above, priv)
		case c.isIngress && priv == nil:
			e := cellapi.FromIngressRule(c.ingress)
			return cellapi.SignedPolicyChange{Ingress: &e, Present: c.present}
		case c.isIngress:
			return cell.SignIngressChange(c.ingress, c.present, origin, above, priv)
		case priv == nil:
			return cellapi.SignedPolicyChange{Rule: cellapi.FromRule(c.rule), Present: c.present}
		}
		return cell.SignPolicyChange(c.rule, c.present, origin, above, priv)
	}
	for start := 0; start < len(all); start += pushBatch {
		batch := all[start:min(start+pushBatch, len(all))]
		req := cellapi.PolicyChangesRequest{Push: true, AllowLargeRemoval: allowLarge,
			Changes: make([]cellapi.SignedPolicyChange, len(batch))}
		for i, c := range batch {
			req.Changes[i] = sign(c, 0)
		}
		results, err := client().PolicyChanges(ctx(), req)
		if err != nil {
			return err
		}
		// The agent holds a newer stamp for some rules (our clock is
		// behind): sign those above it and send them again, as one batch.
		var again []policyChange
		var retry cellapi.PolicyChangesRequest
		for i, res := range results {
			switch {
			case res.Code == http.StatusConflict && priv != nil:
				again = append(again, batch[i])
				retry.Changes = append(retry.Changes, sign(batch[i], res.CurrentStamp))
			case res.Code >= 400 && res.Code != http.StatusNotFound:
				return fmt.Errorf("%s: %s", batch[i], res.Error)
			}
		}
		if len(again) == 0 {
			continue
		}
		retry.Push, retry.AllowLargeRemoval = true, allowLarge
		results, err = client().PolicyChanges(ctx(), retry)
		if err != nil {
			return err
		}
		for i, res := range results {
			if res.Code >= 400 && res.Code != http.StatusNotFound {
				return fmt.Errorf("%s: %s", again[i], res.Error)
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
			var st cellapi.EnforcementState
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
	c := &cobra.Command{
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
	c.AddCommand(flowLogsTailCmd()) // flowlogs.go
	return c
}
