package main

import (
	"errors"
	"fmt"
	"net/http"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/cellapi"
)

// mapRouteCmd is `weft map-route APP DOMAIN --hostname HOST` (map) or
// `weft unmap-route ...` (unmap), as cf's commands for internal routes.
func mapRouteCmd(mapping bool) *cobra.Command {
	var host string
	use, short := "map-route", "make HOST.DOMAIN resolve to APP's instances (an internal route)"
	if !mapping {
		use, short = "unmap-route", "remove an internal route"
	}
	c := &cobra.Command{
		Use:   use + " APP DOMAIN --hostname HOST",
		Short: short,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt := cellapi.InternalRoute{Host: host, Domain: args[1], App: args[0]}
			priv, err := signer()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			verb := "Mapping"
			if !mapping {
				verb = "Unmapping"
			}
			fmt.Fprintf(out, "%s route %s.%s to app %s...\n", verb, rt.Host, rt.Domain, rt.App)
			err = cell.ChangeRoute(ctx(), client(), priv, rt, mapping)
			if err := notFound(err, "Route does not exist."); err != nil {
				return err
			}
			fmt.Fprintln(out, "OK")
			return nil
		},
	}
	c.Flags().StringVar(&host, "hostname", "", "the host name (required)")
	c.MarkFlagRequired("hostname")
	operatorKeyFlag(c)
	return c
}

func routesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "routes",
		Short: "list the internal routes (besides the implicit APP.DOMAIN of every app)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs, err := client().Routes(ctx())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "host\tdomain\tapp")
			for _, r := range rs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Host, r.Domain, r.App)
			}
			return tw.Flush()
		},
	}
}

// notFound replaces an API 404 with msg (the CLI's words for a missing
// policy or route); other errors pass unchanged.
func notFound(err error, msg string) error {
	var se *cellapi.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return errors.New(msg)
	}
	return err
}
