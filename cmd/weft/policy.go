package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/policy"
)

// ruleFromArgs builds a rule from SRC DST and the --protocol/--port flags,
// as policy files do: tcp and udp need --port; icmp takes none; all takes
// one optionally (every port when left out). With neither flag the rule is
// tcp/8080 (as cf's add-network-policy) unless needFlags (remove).
func ruleFromArgs(cmd *cobra.Command, args []string, proto, port string, needFlags bool) (cell.PolicyRule, error) {
	pset, portSet := cmd.Flags().Changed("protocol"), cmd.Flags().Changed("port")
	if !pset {
		switch {
		case portSet:
			return cell.PolicyRule{}, errors.New("--port needs --protocol (tcp, udp or all)")
		case needFlags:
			return cell.PolicyRule{}, errors.New("the required flag --protocol was not given (and --port with tcp or udp)")
		}
		proto, port, portSet = "tcp", "8080", true
	}
	p, err := policy.ParseProtocol(proto)
	if err != nil {
		return cell.PolicyRule{}, fmt.Errorf("--protocol: %w", err)
	}
	var pr policy.PortRange
	switch {
	case p == policy.ProtoICMP && portSet:
		return cell.PolicyRule{}, fmt.Errorf("--port %s: icmp rules take no ports: leave --port out", port)
	case p == policy.ProtoICMP:
	case portSet:
		if pr, err = policy.ParsePorts(port); err != nil {
			return cell.PolicyRule{}, fmt.Errorf("--port: %w", err)
		}
	case p == policy.ProtoAll:
		pr = policy.PortRange{Start: 1, End: 65535} // as in policy files
	default:
		return cell.PolicyRule{}, fmt.Errorf("--protocol %s needs --port N or N-M", p)
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
// As cf's, add defaults to tcp 8080 and remove needs the flags; removing a
// policy that does not exist says so and succeeds.
func policyChangeCmd(add bool) *cobra.Command {
	var proto, port, space, org string
	use, short, verb := "add-network-policy SOURCE_APP DESTINATION_APP [--protocol tcp|udp|all --port N|N-M | --protocol icmp|all]",
		"allow SOURCE_APP to connect to DESTINATION_APP (tcp 8080 unless given)", "Adding"
	if !add {
		use, short, verb = "remove-network-policy SOURCE_APP DESTINATION_APP --protocol tcp|udp|all --port N|N-M | --protocol icmp|all",
			"remove a policy; open connections it allowed are cut", "Removing"
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := noSpaces(space, org); err != nil {
				return err
			}
			r, err := ruleFromArgs(cmd, args, proto, port, !add)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			what := r.Protocol
			if ports := portString(r.Ports); ports != "" {
				what += " " + ports
			}
			fmt.Fprintf(out, "%s network policy from app %s to app %s (%s)...\n", verb, r.Source, r.Destination, what)
			err = changePolicy(r, add)
			var se *cell.StatusError
			switch {
			case !add && errors.As(err, &se) && se.Code == http.StatusNotFound:
				fmt.Fprintln(out, "Policy does not exist.") // and OK, as cf says
			case err != nil:
				return err
			}
			fmt.Fprintln(out, "OK")
			return nil
		},
	}
	c.Flags().StringVar(&proto, "protocol", "", "tcp, udp, icmp or all")
	c.Flags().StringVar(&port, "port", "", "port N or range N-M (tcp, udp; all: default every port; icmp: none)")
	spaceFlags(c, &space, &org)
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

// spaceFlags adds cf's -s SPACE and -o ORG, which weft refuses with the
// reason (noSpaces) rather than as unknown flags.
func spaceFlags(c *cobra.Command, space, org *string) {
	c.Flags().StringVarP(space, "space", "s", "", "cf's destination space: not supported, apps are named cluster-wide")
	c.Flags().StringVarP(org, "org", "o", "", "cf's destination org: not supported, apps are named cluster-wide")
}

func noSpaces(space, org string) error {
	if space == "" && org == "" {
		return nil
	}
	return errors.New("-s SPACE / -o ORG: weft has no orgs or spaces: an app name means the same app on every cell; leave them out (or use names like space.app)")
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
			// cf's columns; weft has no spaces or orgs, so the last two stay
			// empty (and trailing blanks are cut).
			var buf bytes.Buffer
			tw := tabwriter.NewWriter(&buf, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "source\tdestination\tprotocol\tports\tdestination space\tdestination org")
			for _, r := range rules {
				ports := portString(r.Ports)
				if ports == "" {
					ports = "-" // icmp: a column of its own all the same
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\t\n", r.Source, r.Destination, r.Protocol, ports)
			}
			tw.Flush()
			for line := range strings.Lines(buf.String()) {
				fmt.Fprintln(out, strings.TrimRight(line, " \n"))
			}
			return nil
		},
	}
	c.Flags().StringVar(&source, "source", "", "only policies whose source is this app")
	c.Flags().StringVar(&output, "output", "table", "table or json")
	return c
}

// portString is "N" or "N-M", "" for a rule without ports (icmp).
func portString(p cell.PortRange) string {
	if p == (cell.PortRange{}) {
		return ""
	}
	return policy.PortRange{Start: p.Start, End: p.End}.String()
}
