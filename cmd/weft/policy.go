package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/policy"
)

// ruleFromArgs builds a rule from SRC DST and the --protocol/--port flags.
// With neither flag the rule is tcp/8080 (as cf's add-network-policy).
func ruleFromArgs(cmd *cobra.Command, args []string, proto, port string, needFlags bool) (cell.PolicyRule, error) {
	pset, portSet := cmd.Flags().Changed("protocol"), cmd.Flags().Changed("port")
	switch {
	case pset != portSet:
		return cell.PolicyRule{}, errors.New("--protocol and --port go together: give both or neither")
	case !pset && needFlags:
		return cell.PolicyRule{}, errors.New("the required flags --protocol and --port were not given")
	case !pset:
		proto, port = "tcp", "8080"
	}
	p, err := policy.ParseProtocol(proto)
	if err != nil {
		return cell.PolicyRule{}, fmt.Errorf("--protocol: %w", err)
	}
	pr, err := policy.ParsePorts(port)
	if err != nil {
		return cell.PolicyRule{}, fmt.Errorf("--port: %w", err)
	}
	r := policy.Rule{Source: args[0], Destination: args[1], Protocol: p, Ports: pr}
	if err := r.Validate(); err != nil {
		return cell.PolicyRule{}, err
	}
	return cell.FromRule(r), nil
}

func addPolicyCmd() *cobra.Command    { return policyChangeCmd(true) }
func removePolicyCmd() *cobra.Command { return policyChangeCmd(false) }

// policyChangeCmd is add-network-policy (add) or remove-network-policy.
// As cf's, add defaults to tcp 8080 and remove needs both flags.
func policyChangeCmd(add bool) *cobra.Command {
	var proto, port string
	use, short, verb := "add-network-policy SOURCE_APP DESTINATION_APP [--protocol tcp|udp --port N|N-M]",
		"allow SOURCE_APP to connect to DESTINATION_APP (tcp 8080 unless given)", "Adding"
	if !add {
		use, short, verb = "remove-network-policy SOURCE_APP DESTINATION_APP --protocol tcp|udp --port N|N-M",
			"remove a policy; open connections it allowed are cut", "Removing"
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := ruleFromArgs(cmd, args, proto, port, !add)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s network policy from app %s to app %s (%s %s)...\n", verb, r.Source, r.Destination, r.Protocol, portString(r.Ports))
			err = changePolicy(r, add)
			if err := notFound(err, "Policy does not exist."); err != nil {
				return err
			}
			fmt.Fprintln(out, "OK")
			return nil
		},
	}
	c.Flags().StringVar(&proto, "protocol", "", "tcp or udp")
	c.Flags().StringVar(&port, "port", "", "port N or range N-M")
	operatorKeyFlag(c)
	return c
}

// changePolicy adds (present) or removes r: signed here with the operator
// key (--operator-key, WEFT_OPERATOR_KEY), else by the local agent. Removing
// a missing rule is a *cell.StatusError with code 404.
func changePolicy(r cell.PolicyRule, present bool) error {
	priv, err := signer() // operator.go
	if err != nil {
		return err
	}
	if priv == nil {
		if present {
			_, err = client().AddPolicy(ctx(), r)
			return err
		}
		return client().RemovePolicy(ctx(), r)
	}
	res, err := client().SignedPolicy(ctx(), priv, r, present)
	if err == nil && res.Code == http.StatusNotFound {
		err = &cell.StatusError{Code: res.Code, Message: res.Error}
	}
	return err
}

func listPoliciesCmd() *cobra.Command {
	var source, output string
	c := &cobra.Command{
		Use:   "network-policies [--source APP]",
		Short: "list network policies",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			rules, err := client().Policies(ctx(), source)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(cell.PolicyList{Policies: rules})
			}
			tw := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "source\tdestination\tprotocol\tports")
			for _, r := range rules {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Source, r.Destination, r.Protocol, portString(r.Ports))
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&source, "source", "", "only policies whose source is this app")
	c.Flags().StringVar(&output, "output", "table", "table or json")
	return c
}

func portString(p cell.PortRange) string {
	return policy.PortRange{Start: p.Start, End: p.End}.String()
}
