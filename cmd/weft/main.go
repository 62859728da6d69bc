// Command weft is the weft agent and its command-line client.
//
//	weft init --state-dir DIR [--cluster-key FILE]
//	weft agent --name NAME --state-dir DIR --bind IP:PORT [--join IP:PORT]...
//	weft add-network-policy SRC DST [--protocol tcp|udp|all --port N|N-M | --protocol icmp|all]
//	weft run --app APP -- CMD ARGS...
//
// Every client command talks to the local agent over --socket.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cellapi"
)

// socketPath is the global --socket flag.
var socketPath string

func main() {
	root := &cobra.Command{
		Use:           "weft",
		Short:         "container-to-container networking: a WireGuard mesh with app-pair policy",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	def := os.Getenv("WEFT_SOCKET")
	if def == "" {
		def = cellapi.DefaultSocket
	}
	root.PersistentFlags().StringVar(&socketPath, "socket", def, "the agent's local API socket (env WEFT_SOCKET)")
	root.AddCommand(initCmd(), agentCmd(), containerCmd(), runCmd(), statusCmd(),
		addPolicyCmd(), removePolicyCmd(), listPoliciesCmd(), addEgressCmd(), removeEgressCmd(), listEgressCmd(), addIngressCmd(), removeIngressCmd(), listIngressCmd(), policyCmd(), enforcementCmd(), flowLogsCmd(),
		mapRouteCmd(true), mapRouteCmd(false), routesCmd(), clusterKeyCmd(), versionCmd())

	root.AddCommand(traceCmd())

	addCompletions(root)
	err := root.Execute()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		os.Exit(exit.ExitCode()) // `weft run`: the command's own status
	default:
		fmt.Fprintln(os.Stderr, "weft:", err)
		os.Exit(1)
	}
}

func client() *cellapi.Client { return cellapi.NewClient(socketPath) }

func ctx() context.Context { return context.Background() }
