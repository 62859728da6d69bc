package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
	ovl "github.com/weft-net/weft/overlay"
)

func initCmd() *cobra.Command {
	var stateDir, clusterKey, operatorPub, egressDefault string
	c := &cobra.Command{
		Use:   "init --state-dir DIR [--cluster-key FILE] [--egress-default deny|public]",
		Short: "create a cell's state dir with its cluster key and WireGuard key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if egressDefault != "deny" && egressDefault != "public" {
				return fmt.Errorf("--egress-default %q: want deny or public", egressDefault)
			}
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
			op, err := cell.InitOperators(stateDir, clusterKey, operatorPub)
			if err != nil {
				return err
			}
			key := "none (this cell cannot sign policy changes; use --operator-key or WEFT_OPERATOR_KEY)"
			if op.HasKey {
				key = say(op.KeyNew)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "operator key: %s\ntrusted operator keys: %v\n", key, op.Trusted)
			if err := cell.InitEgressDefault(stateDir, egressDefault, res.ClusterKeyNew && op.KeyNew); err != nil {
				return err
			}
			if egressDefault == "public" {
				fmt.Fprintln(cmd.OutOrStdout(), "egress default: public (the agent adds the rules at its first start)")
			}
			if len(op.Trusted) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s trusts no operator key, so it will refuse every policy change: "+
					"give --operator-pub FILE, or --cluster-key with operators.pub next to it\n", stateDir)
			}
			return nil
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", "", "the cell's state directory (required)")
	c.Flags().StringVar(&clusterKey, "cluster-key", "", "copy the cluster key from this file (another cell's cluster.key), and trust the operator keys of the operators.pub next to it")
	c.Flags().StringVar(&operatorPub, "operator-pub", "", "trust the operator public keys in this file (one base64 a line) instead of making an operator key")
	c.Flags().StringVar(&egressDefault, "egress-default", "deny", "a new cluster's egress: deny (containers reach nothing outside the overlay) or public (every public IPv4 address, no private range, as Cloud Foundry's default security groups)")
	c.MarkFlagRequired("state-dir")
	return c
}

func agentCmd() *cobra.Command {
	cfg := cell.DefaultConfig()
	var configFile, logFormat string
	var bind, overlay, logLevel, policyMode, pprofAddr string
	var memLimitMiB int64
	var dnsAddr string
	var dnsUpstreams []string
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
			if err := cell.CheckOverlayCIDR(cfg.OverlayCIDR); err != nil {
				return err
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
			if cfg.Logger, err = newLogger(os.Stderr, logFormat, level); err != nil {
				return err
			}
			switch policyMode {
			case "on":
			case "off":
				cfg.PolicyOff = true
			default:
				return fmt.Errorf("--policy %q: want on or off", policyMode)
			}
			if _, err := ovl.ParseTUNBackend(cfg.TUNBackend); err != nil {
				return fmt.Errorf("--tun-backend: %w", err)
			}
			if cfg.Queues < 0 || cfg.Queues > 64 {
				return fmt.Errorf("--queues %d: want 0 (the default for this cell's CPUs) to 64", cfg.Queues)
			}
			stopProf, err := startProfiling(pprofAddr, cfg.Logger)
			if err != nil {
				return err
			}
			defer stopProf()
			cfg.Socket = socketPath
			if err := dnsFlags(&cfg, dnsAddr, dnsUpstreams); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			setMemoryLimit(ctx, memLimitMiB<<20)
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
	f.DurationVar(&cfg.LeaseHold, "lease-hold", 24*time.Hour, "how long a dead cell's subnet stays reserved for its return (unless the pool is otherwise exhausted)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&dnsAddr, "dns-addr", cfg.DNSAddr.String(), "link-local address of the DNS server for containers (\"\" = no DNS)")
	f.StringArrayVar(&cfg.InternalDomains, "internal-domain", []string{"apps.internal"}, "internal domain answered by the DNS server (repeatable)")
	f.StringArrayVar(&dnsUpstreams, "dns-upstream", nil, "resolver IP[:PORT] for other names (repeatable; default: /etc/resolv.conf; \"none\": refuse them)")
	f.StringVar(&policyMode, "policy", "on", "policy enforcement: on, or off to pass every packet (benchmarks only)")
	f.StringVar(&cfg.TUNBackend, "tun-backend", "auto", "TUN backend: auto (wireguard, water if the kernel refuses TUN offloads), wireguard or water")
	f.BoolVar(&cfg.NoFastPath, "no-fast-path", false, "send containers' overlay packets through the cell's IP stack instead of from their veths straight to the TUN (an eBPF program per veth)")
	f.IntVar(&cfg.Queues, "queues", 0, fmt.Sprintf("TUN queues of the data path, each with its reader, and UDP sockets per family on the WireGuard port (0: one per CPU up to %d, one below 3 CPUs)", ovl.MaxQueues))
	f.BoolVar(&cfg.PartialTCPChecksums, "partial-tcp-checksums", true, "leave the checksums of TCP segments partial toward cells that accept them, and announce that this one does (needs the wireguard TUN backend)")
	f.Int64Var(&memLimitMiB, "memory-limit", defaultMemoryLimit>>20, "soft Go memory limit in MiB, raised to 4/3 of the live heap plus the runtime's overhead when that is more (0: none; GOMEMLIMIT overrides)")
	f.StringVar(&pprofAddr, "pprof-addr", "", "serve net/http/pprof on this loopback IP:PORT (in the agent's namespace) and record blocking; also WEFT_CPUPROFILE=FILE writes a CPU profile at exit")
	agentExtraFlags(c, &cfg, &configFile, &logFormat)
	for _, n := range []string{"name", "state-dir", "bind"} {
		c.MarkFlagRequired(n)
	}
	return c
}
