package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/policy"
)

func addEgressCmd() *cobra.Command    { return egressChangeCmd(true) }
func removeEgressCmd() *cobra.Command { return egressChangeCmd(false) }

// egressChangeCmd is add-egress-rule (add) or remove-egress-rule.
func egressChangeCmd(add bool) *cobra.Command {
	var all bool
	var dst, proto, port string
	use, short, verb := "add-egress-rule APP|--all --destination CIDR|A-B --protocol tcp|udp|icmp|all [--port N|N-M]",
		"allow APP's containers (or every app's) to reach addresses outside the overlay, through NAT on their cell", "Adding"
	if !add {
		use, short, verb = "remove-egress-rule APP|--all --destination CIDR|A-B --protocol tcp|udp|icmp|all [--port N|N-M]",
			"remove an egress rule; open connections it allowed are cut", "Removing"
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app := policy.EgressAll
			switch {
			case all && len(args) == 1:
				return errors.New("give APP or --all, not both")
			case !all && len(args) == 0:
				return errors.New("give APP, or --all for every app")
			case !all:
				app = args[0]
			}
			if dst == "" || proto == "" {
				return errors.New("the required flags --destination and --protocol were not given")
			}
			r := cellapi.EgressRule{App: app, Destination: dst, Protocol: proto, Ports: port}
			rule, err := r.Rule(netip.Prefix{}) // the agent checks the overlay
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s egress rule %s...\n", verb, rule)
			priv, err := signer()
			if err != nil {
				return err
			}
			res, err := cell.ChangeEgressRule(ctx(), client(), priv, r, add)
			if err := notFound(err, "Egress rule does not exist."); err != nil {
				return err
			}
			for _, w := range res.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			fmt.Fprintln(out, "OK")
			return nil
		},
	}
	c.Flags().BoolVar(&all, "all", false, "the rule applies to every app")
	c.Flags().StringVar(&dst, "destination", "", "IPv4 CIDR (10.0.11.0/24), range (10.0.11.1-10.0.11.9) or address")
	c.Flags().StringVar(&proto, "protocol", "", "tcp, udp, icmp or all")
	c.Flags().StringVar(&port, "port", "", "port N or range N-M (tcp, udp, all; default every port)")
	operatorKeyFlag(c)
	return c
}

func listEgressCmd() *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "egress-rules",
		Short: "list egress rules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			rules, err := client().EgressRules(ctx())
			if err != nil {
				return err
			}
			rows := make([][]string, 0, len(rules))
			for _, r := range rules {
				app := r.App
				if app == policy.EgressAll {
					app = "(all apps)"
				}
				rows = append(rows, []string{app, r.Destination, r.Protocol, r.Ports})
			}
			return writeListing(cmd.OutOrStdout(), output, cellapi.EgressRuleList{EgressRules: rules}, "app\tdestination\tprotocol\tports", rows)
		},
	}
	c.Flags().StringVar(&output, "output", "table", "table or json")
	c.AddCommand(importEgressCmd())
	return c
}

// importEgressCmd adds the rules of a Cloud Foundry security group's JSON
// file, as binding the group to APP (or, --all, as a running security
// group) would.
func importEgressCmd() *cobra.Command {
	var all, dryRun bool
	c := &cobra.Command{
		Use:   "import APP|--all FILE.json [--dry-run]",
		Short: "add the egress rules of a Cloud Foundry security group (ASG) JSON file for APP or every app",
		Long: `Add the rules of a Cloud Foundry application security group, the file
that 'cf create-security-group NAME FILE.json' takes:

  [{"protocol":"tcp","destination":"10.0.11.0/24","ports":"80,443"},
   {"protocol":"icmp","destination":"0.0.0.0/0","type":-1,"code":-1}]

as egress rules of APP, or of every app with --all (as 'cf
bind-running-security-group' would). Rules already present stay; the
others are added as one batch. A bad file changes nothing: unknown fields,
invalid destinations or ports, ports on icmp, or a rule that overlaps one
of the app's rules give an error naming the rule.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			app := policy.EgressAll
			switch {
			case all && len(args) != 1:
				return errors.New("give APP or --all, not both, and the file")
			case !all && len(args) != 2:
				return errors.New("give APP (or --all) and the file")
			case !all:
				app, args = args[0], args[1:]
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			overlay, err := agentOverlay()
			if err != nil {
				return err
			}
			rules, err := policy.ParseASG(args[0], app, data, overlay)
			if err != nil {
				return err
			}
			have, err := currentEgress()
			if err != nil {
				return err
			}
			add, _ := policy.DiffEgress(have, rules)
			out := cmd.OutOrStdout()
			for _, r := range add {
				fmt.Fprintf(out, "+ egress %s\n", r)
				for _, w := range r.Warnings(overlay) {
					fmt.Fprintln(out, "  warning:", w)
				}
			}
			if dryRun {
				fmt.Fprintf(out, "dry run: %d to add, %d already present, nothing changed\n", len(add), len(rules)-len(add))
				return nil
			}
			changes := make([]policyChange, len(add))
			for i, r := range add {
				changes[i] = policyChange{egress: r, isEgress: true, present: true}
			}
			if err := pushChanges(changes, false); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			fmt.Fprintf(out, "%d added, %d already present\n", len(add), len(rules)-len(add))
			return nil
		},
	}
	c.Flags().BoolVar(&all, "all", false, "the rules apply to every app")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "print the rules to add, change nothing")
	operatorKeyFlag(c)
	return c
}
