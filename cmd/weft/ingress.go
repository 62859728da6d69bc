package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/policy"
)

func addIngressCmd() *cobra.Command    { return ingressChangeCmd(true) }
func removeIngressCmd() *cobra.Command { return ingressChangeCmd(false) }

// ingressChangeCmd is add-ingress-rule (add) or remove-ingress-rule.
func ingressChangeCmd(add bool) *cobra.Command {
	var fromHost bool
	var src, proto, port string
	use, short, verb := "add-ingress-rule APP --protocol tcp|udp --port N|N-M (--from-host | --source CIDR|A-B)",
		"allow traffic from outside the overlay (a host port, the underlay, the cell hosts) to APP's containers", "Adding"
	if !add {
		use, short, verb = "remove-ingress-rule APP --protocol tcp|udp --port N|N-M (--from-host | --source CIDR|A-B)",
			"remove an ingress rule; open connections it allowed are cut", "Removing"
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case fromHost && src != "":
				return errors.New("give --from-host or --source, not both")
			case fromHost:
				src = policy.IngressFromHost
			case src == "":
				return errors.New("give --from-host (the cell hosts) or --source CIDR|A-B (addresses outside the overlay)")
			}
			if proto == "" || port == "" {
				return errors.New("the required flags --protocol and --port were not given")
			}
			r := cellapi.IngressRule{App: args[0], Source: src, Protocol: proto, Ports: port}
			rule, err := r.Rule(netip.Prefix{}) // the agent checks the overlay
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s ingress rule %s...\n", verb, rule)
			priv, err := signer()
			if err != nil {
				return err
			}
			_, err = cell.ChangeIngressRule(ctx(), client(), priv, r, add)
			if err := notFound(err, "Ingress rule does not exist."); err != nil {
				return err
			}
			fmt.Fprintln(out, "OK")
			return nil
		},
	}
	c.Flags().BoolVar(&fromHost, "from-host", false, "from the cell hosts: the container's own, and other cells' through the tunnel")
	c.Flags().StringVar(&src, "source", "", "IPv4 CIDR, range A-B or address outside the overlay (a host port's clients, a router)")
	c.Flags().StringVar(&proto, "protocol", "", "tcp or udp")
	c.Flags().StringVar(&port, "port", "", "the container's port N or range N-M (for a host port: the container port it maps to)")
	operatorKeyFlag(c)
	return c
}

func listIngressCmd() *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "ingress-rules",
		Short: "list ingress rules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			rules, err := client().IngressRules(ctx())
			if err != nil {
				return err
			}
			rows := make([][]string, 0, len(rules))
			for _, r := range rules {
				src := r.Source
				if src == policy.IngressFromHost {
					src = "(cell hosts)"
				}
				rows = append(rows, []string{r.App, src, r.Protocol, r.Ports})
			}
			return writeListing(cmd.OutOrStdout(), output, cellapi.IngressRuleList{IngressRules: rules}, "app\tsource\tprotocol\tports", rows)
		},
	}
	c.Flags().StringVar(&output, "output", "table", "table or json")
	return c
}
