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
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/policy"
)

// ruleFromArgs builds a rule from SRC DST and the --protocol/--port flags,
// as policy files do: tcp and udp need --port; icmp takes none; all takes
// one optionally (every port when left out). With neither flag the rule is
// tcp/8080 (as cf's add-network-policy) unless needFlags (remove). space
// and org (cf's -s and -o) qualify the destination: ORG/SPACE/DST.
func ruleFromArgs(cmd *cobra.Command, args []string, proto, port, space, org string, needFlags bool) (cellapi.PolicyRule, error) {
	dst, err := qualifyDestination(args[1], space, org)
	if err != nil {
		return cellapi.PolicyRule{}, err
	}
	pset, portSet := cmd.Flags().Changed("protocol"), cmd.Flags().Changed("port")
	if !pset {
		switch {
		case portSet:
			return cellapi.PolicyRule{}, errors.New("--port needs --protocol (tcp, udp or all)")
		case needFlags:
			return cellapi.PolicyRule{}, errors.New("the required flag --protocol was not given (and --port with tcp or udp)")
		}
		proto, port, portSet = "tcp", "8080", true
	}
	p, err := policy.ParseProtocol(proto)
	if err != nil {
		return cellapi.PolicyRule{}, fmt.Errorf("--protocol: %w", err)
	}
	var pr policy.PortRange
	switch {
	case p == policy.ProtoICMP && portSet:
		return cellapi.PolicyRule{}, fmt.Errorf("--port %s: icmp rules take no ports: leave --port out", port)
	case p == policy.ProtoICMP:
	case portSet:
		if pr, err = policy.ParsePorts(port); err != nil {
			return cellapi.PolicyRule{}, fmt.Errorf("--port: %w", err)
		}
	case p == policy.ProtoAll:
		pr = policy.PortRange{Start: 1, End: 65535} // as in policy files
	default:
		return cellapi.PolicyRule{}, fmt.Errorf("--protocol %s needs --port N or N-M", p)
	}
	r := policy.Rule{Source: args[0], Destination: dst, Protocol: p, Ports: pr}
	if err := r.Validate(); err != nil {
		return cellapi.PolicyRule{}, err
	}
	return cellapi.FromRule(r), nil
}

func addPolicyCmd() *cobra.Command    { return policyChangeCmd(true) }
func removePolicyCmd() *cobra.Command { return policyChangeCmd(false) }

// policyChangeCmd is add-network-policy (add) or remove-network-policy.
// As cf's, add defaults to tcp 8080 and remove needs the flags; removing a
// policy that does not exist says so and succeeds.
func policyChangeCmd(add bool) *cobra.Command {
	var proto, port, space, org string
	use, short, verb := "add-network-policy SOURCE_APP DESTINATION_APP [-s SPACE -o ORG] [--protocol tcp|udp|all --port N|N-M | --protocol icmp|all]",
		"allow SOURCE_APP to connect to DESTINATION_APP (tcp 8080 unless given)", "Adding"
	if !add {
		use, short, verb = "remove-network-policy SOURCE_APP DESTINATION_APP [-s SPACE -o ORG] --protocol tcp|udp|all --port N|N-M | --protocol icmp|all",
			"remove a policy; open connections it allowed are cut", "Removing"
	}
	c := &cobra.Command{
		Use:               use,
		Short:             short,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeAppPair, // complete.go
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := ruleFromArgs(cmd, args, proto, port, space, org, !add)
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
			var se *cellapi.StatusError
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
// a missing rule is a *cellapi.StatusError with code 404.
func changePolicy(r cellapi.PolicyRule, present bool) error {
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
	res, err := cell.SignedPolicy(ctx(), client(), priv, r, present)
	if err == nil && res.Code == http.StatusNotFound {
		err = &cellapi.StatusError{Code: res.Code, Message: res.Error}
	}
	return err
}

// spaceFlags adds cf's -s SPACE and -o ORG: the destination app's space
// and org (docs/policy.md, "Orgs and spaces").
func spaceFlags(c *cobra.Command, space, org *string) {
	c.Flags().StringVarP(space, "space", "s", "", "the destination app's space (with -o): the rule names ORG/SPACE/DESTINATION_APP")
	c.Flags().StringVarP(org, "org", "o", "", "the destination app's org (with -s)")
}

// qualifyDestination is dst in space and org: ORG/SPACE/DST, or dst
// without them. weft has no targeted org or space (cf's `cf target`), so
// -s and -o go together.
func qualifyDestination(dst, space, org string) (string, error) {
	switch {
	case space == "" && org == "":
		return dst, nil
	case space == "":
		return "", fmt.Errorf("-o %s needs -s SPACE: the destination app's space in that org", org)
	case org == "":
		return "", fmt.Errorf("-s %s needs -o ORG: weft has no targeted org (cf target), so name the space's org", space)
	case strings.Contains(dst, "/"):
		return "", fmt.Errorf("destination %s is already ORG/SPACE/APP: leave -s and -o out", dst)
	}
	for _, f := range []struct{ flag, v string }{{"-s", space}, {"-o", org}} {
		if strings.Contains(f.v, "/") || !policy.ValidAppName(f.v) {
			return "", fmt.Errorf("%s %s: must be 1-128 characters from A-Z a-z 0-9 . _ -", f.flag, policy.Quote(f.v))
		}
	}
	return policy.QualifyApp(org, space, dst), nil
}

func listPoliciesCmd() *cobra.Command {
	var source, output string
	c := &cobra.Command{
		Use:   "network-policies [--source APP|ORG/SPACE/APP]",
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
				return enc.Encode(cellapi.PolicyList{Policies: rules})
			}
			// cf's columns: a qualified destination (ORG/SPACE/APP)
			// shows its app, space and org apart; a plain one leaves the
			// last two empty (and trailing blanks are cut).
			var buf bytes.Buffer
			tw := tabwriter.NewWriter(&buf, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "source\tdestination\tprotocol\tports\tdestination space\tdestination org")
			for _, r := range rules {
				ports := portString(r.Ports)
				if ports == "" {
					ports = "-" // icmp: a column of its own all the same
				}
				org, space, dst := policy.SplitApp(r.Destination)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Source, dst, r.Protocol, ports, space, org)
			}
			tw.Flush()
			for line := range strings.Lines(buf.String()) {
				fmt.Fprintln(out, strings.TrimRight(line, " \n"))
			}
			return nil
		},
	}
	c.Flags().StringVar(&source, "source", "", "only policies whose source is this app")
	c.RegisterFlagCompletionFunc("source", completeApp)
	c.Flags().StringVar(&output, "output", "table", "table or json")
	return c
}

// portString is "N" or "N-M", "" for a rule without ports (icmp).
func portString(p cellapi.PortRange) string {
	if p == (cellapi.PortRange{}) {
		return ""
	}
	return policy.PortRange{Start: p.Start, End: p.End}.String()
}
