package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cellapi"
)

func containerCmd() *cobra.Command {
	c := &cobra.Command{Use: "container", Short: "create, delete and list containers of this cell"}
	var app, name, output string
	create := &cobra.Command{
		Use:   "create --app APP --name ID",
		Short: "create a container (a network namespace named ID) and print its overlay IP",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ct, err := client().CreateContainer(ctx(), cellapi.ContainerRequest{App: app, Name: name})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), ct.IP)
			return nil
		},
	}
	create.Flags().StringVar(&app, "app", "", "the app this container is an instance of (required)")
	create.Flags().StringVar(&name, "name", "", "container ID, also the network namespace name (required)")
	create.MarkFlagRequired("app")
	create.MarkFlagRequired("name")

	del := &cobra.Command{
		Use:   "delete ID",
		Short: "delete a container",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return client().DeleteContainer(ctx(), args[0])
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "list this cell's containers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, err := client().Containers(ctx())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				return json.NewEncoder(out).Encode(cs)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "name\tapp\tip\tstatus")
			for _, c := range cs {
				status := c.Status
				if status == "" {
					status = "ok"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, c.App, c.IP, status)
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&output, "output", "table", "table or json")
	c.AddCommand(create, del, list)
	return c
}

func runCmd() *cobra.Command {
	var app, name string
	c := &cobra.Command{
		Use:   "run --app APP [--name ID] -- CMD ARGS...",
		Short: "run CMD in a new container of APP; CF_INSTANCE_INTERNAL_IP is its overlay IP",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" {
				var b [4]byte
				rand.Read(b[:])
				// ORG/SPACE/APP names container ORG.SPACE.APP-RANDOM
				// (a namespace name has no '/').
				name = strings.ReplaceAll(app, "/", ".") + "-" + hex.EncodeToString(b[:])
			}
			ct, err := client().CreateContainer(ctx(), cellapi.ContainerRequest{App: app, Name: name})
			if err != nil {
				return err
			}
			defer func() {
				if err := client().DeleteContainer(ctx(), ct.Name); err != nil {
					fmt.Fprintln(os.Stderr, "weft: delete container:", err)
				}
			}()
			// `ip netns exec` enters the container's network namespace
			// and, in a private mount namespace, shows it the files of
			// /etc/netns/ID: its resolv.conf points at the cell's DNS.
			child := exec.Command("ip", append([]string{"netns", "exec", ct.Name}, args...)...)
			child.Env = append(os.Environ(), "CF_INSTANCE_INTERNAL_IP="+ct.IP, "WEFT_APP="+app, "WEFT_CONTAINER="+ct.Name)
			child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr
			// Interrupts go to the command; we clean up when it exits.
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sig)
			if err := child.Start(); err != nil {
				return fmt.Errorf("start %s in container %s: %w", args[0], ct.Name, err)
			}
			fmt.Fprintf(os.Stderr, "weft: container %s (app %s) at %s running %s\n", ct.Name, app, ct.IP, args[0])
			done := make(chan error, 1)
			go func() { done <- child.Wait() }()
			for {
				select {
				case s := <-sig:
					child.Process.Signal(s)
				case err := <-done:
					return err
				}
			}
		},
	}
	c.Flags().StringVar(&app, "app", "", "the app (required)")
	c.Flags().StringVar(&name, "name", "", "container ID (default APP-RANDOM)")
	c.Flags().SetInterspersed(false)
	c.MarkFlagRequired("app")
	return c
}

func statusCmd() *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "status",
		Short: "this cell: subnet, members, WireGuard peers, policy count",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := client().Status(ctx())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch output {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			case "table":
			default:
				return fmt.Errorf("--output %q: want table or json", output)
			}
			subnet := st.Subnet
			if subnet == "" {
				subnet = "(no lease yet)"
				if st.LeaseError != "" {
					subnet = "(none: " + st.LeaseError + ")"
				}
			}
			if st.SubnetConflict != "" {
				subnet += fmt.Sprintf(" CONFLICT: lost to %s (older lease); %d containers unreachable, new ones refused",
					st.SubnetConflict, st.ConflictedContainers)
			}
			enforced := "on"
			if !st.PolicyEnforced {
				enforced = "OFF (every packet passes)"
			}
			tcpSums := "full (verified)"
			if st.PartialTCPChecksums {
				tcpSums = "partial accepted (announced to peers)"
			}
			ready := "yes"
			if !st.Ready {
				ready = "no: " + st.NotReady
			}
			fmt.Fprintf(out, "cell:       %s\nversion:    %s\nready:      %s\nsubnet:     %s\ninterface:  %s\ncontainers: %d\npolicies:   %d (version %012x)\nenforced:   %s\nflows:      %d\ntcp sums:   %s\nmembers:    %d alive, %d suspect, %d dead, %d left\n",
				st.Name, st.Version, ready, subnet, st.Interface, st.Containers, st.Policies, st.PolicyVersion, enforced, st.Flows, tcpSums,
				st.MemberCounts["alive"], st.MemberCounts["suspect"], st.MemberCounts["dead"], st.MemberCounts["left"])
			if st.VersionWarning != "" {
				fmt.Fprintf(out, "warning:    %s\n", st.VersionWarning)
			}
			fmt.Fprintln(out)
			tw := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "member\taddress\tstate\tsubnet\tversion\tfeatures")
			for _, m := range st.Members {
				v, feats := m.Version, strings.Join(m.Features, ",")
				if v == "" {
					v = "unknown (older)"
				}
				if feats == "" {
					feats = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Addr, m.State, m.Subnet, v, feats)
			}
			fmt.Fprintln(tw, "\npeer\tpublic key\tendpoint\tallowed ips\thandshake\trx bytes\ttx bytes\tpath mtu\ttcp sums out")
			for _, p := range st.Peers {
				hs := "never"
				if !p.LastHandshake.IsZero() {
					hs = fmt.Sprintf("%s ago", since(p.LastHandshake))
				}
				name := p.Name
				if name == "" {
					name = "?"
				}
				sums := "full"
				if p.PartialTCPChecksum {
					sums = "partial"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%d\t%d\t%s\t%s\n", name, p.PublicKey, p.Endpoint, p.AllowedIPs, hs, p.RxBytes, p.TxBytes, pathMTU(p), sums)
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&output, "output", "table", "table or json")
	return c
}

// pathMTU shows a peer's probed path MTU for the status table.
func pathMTU(p cellapi.Peer) string {
	switch p.PathMTUState {
	case "":
		return "-"
	case "ok":
		return strconv.Itoa(p.PathMTU)
	case "reduced":
		return strconv.Itoa(p.PathMTU) + " (reduced)"
	case "no_reply":
		return "no reply"
	}
	return p.PathMTUState
}
