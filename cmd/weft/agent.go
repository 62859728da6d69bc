package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
)

func initCmd() *cobra.Command {
	var stateDir, clusterKey string
	c := &cobra.Command{
		Use:   "init --state-dir DIR [--cluster-key FILE]",
		Short: "create a cell's state dir with its cluster key and WireGuard key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := cell.Init(stateDir, clusterKey)
			if err != nil {
				return err
			}
			say := func(isNew bool) string {
				if isNew {
					return "created"
				}
				return "kept"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "state dir %s\ncluster key: %s\nWireGuard key: %s (public key %s)\n",
				res.StateDir, say(res.ClusterKeyNew), say(res.WireGuardKeyNew), res.PublicKey)
			return nil
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", "", "the cell's state directory (required)")
	c.Flags().StringVar(&clusterKey, "cluster-key", "", "copy the cluster key from this file (another cell's cluster.key)")
	c.MarkFlagRequired("state-dir")
	return c
}

func agentCmd() *cobra.Command {
	cfg := cell.DefaultConfig()
	var bind, overlay, logLevel string
	c := &cobra.Command{
		Use:   "agent --name NAME --state-dir DIR --bind IP:PORT [--join IP:PORT]...",
		Short: "run this cell: gossip, WireGuard mesh, policy enforcement, local API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.Bind, err = netip.ParseAddrPort(bind); err != nil {
				return fmt.Errorf("--bind %q: want IP:PORT: %w", bind, err)
			}
			if cfg.OverlayCIDR, err = netip.ParsePrefix(overlay); err != nil {
				return fmt.Errorf("--overlay-cidr %q: %w", overlay, err)
			}
			for _, j := range cfg.Join {
				if _, err := netip.ParseAddrPort(j); err != nil {
					return fmt.Errorf("--join %q: want IP:PORT: %w", j, err)
				}
			}
			if cfg.SubnetBits <= cfg.OverlayCIDR.Bits() || cfg.SubnetBits > 30 {
				return fmt.Errorf("--subnet-prefix %d must be longer than the overlay's /%d and at most 30", cfg.SubnetBits, cfg.OverlayCIDR.Bits())
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: %w", logLevel, err)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			cfg.Socket = socketPath
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return cell.Run(ctx, cfg)
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.Name, "name", "", "cell name, unique in the cluster (required)")
	f.StringVar(&cfg.StateDir, "state-dir", "", "state dir made by `weft init` (required)")
	f.StringVar(&bind, "bind", "", "gossip address IP:PORT; WireGuard listens on the same IP (required)")
	f.StringArrayVar(&cfg.Join, "join", nil, "IP:PORT of a cell to join (repeatable)")
	f.IntVar(&cfg.WGPort, "wg-port", cfg.WGPort, "WireGuard UDP port")
	f.StringVar(&cfg.Interface, "interface", cfg.Interface, "TUN device name (names the UAPI socket /var/run/wireguard/NAME.sock)")
	f.StringVar(&overlay, "overlay-cidr", cfg.OverlayCIDR.String(), "the whole overlay network")
	f.IntVar(&cfg.SubnetBits, "subnet-prefix", cfg.SubnetBits, "prefix length of each cell's subnet")
	f.IntVar(&cfg.MTU, "mtu", 0, "overlay MTU (0: underlay MTU - 80)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	for _, n := range []string{"name", "state-dir", "bind"} {
		c.MarkFlagRequired(n)
	}
	return c
}
