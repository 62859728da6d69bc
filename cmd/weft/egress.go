package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
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
			r := cell.EgressRule{App: app, Destination: dst, Protocol: proto, Ports: port}
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
			res, err := client().ChangeEgressRule(ctx(), priv, r, add)
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
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(cell.EgressRuleList{EgressRules: rules})
			}
			tw := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "app\tdestination\tprotocol\tports")
			for _, r := range rules {
				app := r.App
				if app == policy.EgressAll {
					app = "(all apps)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", app, r.Destination, r.Protocol, r.Ports)
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&output, "output", "table", "table or json")
	return c
}
