package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// flowLogsTailCmd is `weft flow-logs tail`: the agent's flow-log lines,
// the ones it kept and then new ones, until interrupted.
func flowLogsTailCmd() *cobra.Command {
	var app, verdict string
	c := &cobra.Command{
		Use:   "tail [--app APP] [--verdict V]",
		Short: "follow the flow logs (JSON lines) through the agent's API until interrupted",
		Long: `tail prints the flow-log lines the agent kept (the last 1024) and then every new
one, as JSON lines: verdict, direction (inbound, outbound, local), protocol, source and
destination with their apps, and the rule of an accept. The agent logs while someone
tails, whether or not 'weft flow-logs on' sends the lines to its stderr as well.
--app keeps lines with APP as source or destination; --verdict a verdict name
(accept, no_policy, revoked, spoofed, unknown_source, unknown_destination, fragment, ...),
allowed or denied.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return client().TailFlowLogs(ctx, app, verdict, cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&app, "app", "", "only lines with this app as source or destination")
	c.RegisterFlagCompletionFunc("app", completeApp) // complete.go
	c.Flags().StringVar(&verdict, "verdict", "", "only lines with this verdict (a verdict name, allowed or denied)")
	return c
}
