package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cellapi"
)

// traceCmd is `weft trace`: would a flow pass, and why (POST /v1/trace).
func traceCmd() *cobra.Command {
	var proto, port, from, output, sourceIP string
	var live bool
	c := &cobra.Command{
		Use:   "trace SOURCE_APP DESTINATION_APP|IP [--protocol tcp|udp|icmp --port N] | trace --from-container ID DESTINATION_APP|IP",
		Short: "explain whether SOURCE_APP can reach a destination, step by step, without sending traffic",
		Long: `trace answers from the replicated state and this cell's data plane: the source's
containers, the anti-spoofing binding, the destination's containers, the rule that
allows the flow (or the closest ones), enforcement, the destination cell's WireGuard
peer and handshake, and the path MTU as far as this cell knows it. The protocol is
tcp and the port 8080 unless given.

With --live, the agent sends ONE real probe (a TCP SYN, a UDP datagram or an ICMP
echo) from a source container on this cell, inside its network namespace, and
reports where it went: the source guard, this cell's engine, the tunnel, the
destination cell's engine (asked through the tunnel) and what came back.
--source-ip sends it from another address, to see the guard drop a spoofed packet.`,
		Args:              cobra.RangeArgs(1, 2),
		ValidArgsFunction: completeAppPair, // complete.go
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			req := cellapi.TraceRequest{FromContainer: from, Protocol: proto, Live: live, SourceIP: sourceIP}
			if sourceIP != "" && !live {
				return errors.New("--source-ip needs --live")
			}
			switch {
			case len(args) == 2:
				req.Source, req.Destination = args[0], args[1]
			case from != "":
				req.Destination = args[0]
			default:
				return errors.New("give SOURCE_APP and DESTINATION, or --from-container ID and DESTINATION")
			}
			switch {
			case !cmd.Flags().Changed("port") && proto == "icmp":
			case !cmd.Flags().Changed("port") && proto != "tcp":
				return fmt.Errorf("--port is required with --protocol %s", proto)
			default:
				n, err := strconv.ParseUint(port, 10, 16)
				if err != nil || n == 0 {
					return fmt.Errorf("--port %q: want a port number 1-65535", port)
				}
				req.Port = uint16(n)
			}
			res, err := client().Trace(ctx(), req)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			printTrace(cmd.OutOrStdout(), req, res)
			return nil
		},
	}
	c.Flags().StringVar(&proto, "protocol", "tcp", "tcp, udp or icmp")
	c.Flags().StringVar(&port, "port", "8080", "destination port (not with icmp)")
	c.Flags().StringVar(&from, "from-container", "", "trace from this container (name or overlay IP) instead of every container of SOURCE_APP")
	c.Flags().StringVar(&output, "output", "text", "text or json")
	c.Flags().BoolVar(&live, "live", false, "send one real probe from a source container on this cell and report where it was dropped or that it was delivered")
	c.Flags().StringVar(&sourceIP, "source-ip", "", "with --live: send the probe from this address instead of the container's (a spoofed source)")
	return c
}

func printTrace(w io.Writer, req cellapi.TraceRequest, res *cellapi.TraceResult) {
	src := req.Source
	if req.FromContainer != "" {
		src = "container " + req.FromContainer
	}
	flow := req.Protocol
	if req.Port != 0 {
		flow += " port " + strconv.Itoa(int(req.Port))
	}
	if res.Live {
		fmt.Fprintf(w, "live trace %s -> %s %s from cell %s: probe %s\n", src, req.Destination, flow, res.Cell, res.Probe)
	} else {
		fmt.Fprintf(w, "trace %s -> %s %s, as cell %s sees it\n", src, req.Destination, flow, res.Cell)
	}
	for _, s := range res.Steps {
		mark := "ok  "
		switch {
		case s.Code != "":
			mark = "DENY"
		case !s.OK:
			mark = "warn"
		}
		fmt.Fprintf(w, "  %s %-16s %s", mark, s.Step, s.Detail)
		if s.Code != "" {
			fmt.Fprintf(w, " [%s]", s.Code)
		}
		fmt.Fprintln(w)
		for _, r := range s.Closest {
			fmt.Fprintf(w, "       %-16s closest rule: %s -> %s %s %s\n", "", r.Source, r.Destination, r.Protocol, portString(r.Ports))
		}
	}
	fmt.Fprintf(w, "verdict: %s\n", res.Verdict)
	if res.DroppedAt != "" {
		fmt.Fprintf(w, "dropped at: %s\n", res.DroppedAt)
	}
	fmt.Fprintf(w, "reason: %s\n", res.Reason)
}
