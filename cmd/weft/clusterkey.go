package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh/store"
)

// clusterKeyCmd rotates the gossip encryption key without downtime:
//
//	weft cluster-key install FILE | --generate [--out FILE]
//	weft cluster-key use FILE
//	weft cluster-key remove FILE
//	weft cluster-key list
//
// Each change is signed (as policy changes are) and spread to every cell.
func clusterKeyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "cluster-key",
		Short: "rotate the cluster (gossip) key: install a new key, use it, remove the old one",
		Long: `Rotate the gossip encryption key of the whole cluster without downtime:

  weft cluster-key install --generate --out new.key   # every cell also accepts new.key
  weft cluster-key list                                # on a few cells: both keys listed
  weft cluster-key use new.key                         # every cell now sends with new.key
  weft cluster-key remove old-cluster.key              # the old key no longer works

Each operation is signed with the operator key (--operator-key, WEFT_OPERATOR_KEY,
or the agent's own operator.key) and applied by every cell.`,
	}
	var generate bool
	var out string
	install := &cobra.Command{
		Use:   "install FILE | --generate [--out FILE]",
		Short: "add a key to every cell's keyring (they accept it, but still send with the primary key)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var key []byte
			switch {
			case generate && len(args) == 0:
				key = make([]byte, 32)
				if _, err := rand.Read(key); err != nil {
					return err
				}
				if out == "" {
					out = "cluster-" + store.Fingerprint(key) + ".key"
				}
				if err := writeNewKey(out, key); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "generated cluster key %s in %s\n", store.Fingerprint(key), out)
			case !generate && len(args) == 1:
				var err error
				if key, err = readKeyFile(args[0]); err != nil {
					return err
				}
			default:
				return errors.New("give a key FILE or --generate, not both")
			}
			return keyringOp(cmd, cellapi.KeyringRequest{Op: store.KeyInstall, Key: key})
		},
	}
	install.Flags().BoolVar(&generate, "generate", false, "make a new random key")
	install.Flags().StringVar(&out, "out", "", "with --generate: write the new key here (0600; default ./cluster-FINGERPRINT.key)")
	use := &cobra.Command{
		Use:   "use FILE",
		Short: "make the key in FILE the primary key of every cell (install it first everywhere)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := readKeyFile(args[0])
			if err != nil {
				return err
			}
			return keyringOp(cmd, cellapi.KeyringRequest{Op: store.KeyUse, Key: key})
		},
	}
	remove := &cobra.Command{
		Use:   "remove FILE",
		Short: "remove the key in FILE from every cell's keyring (not the primary key)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := readKeyFile(args[0])
			if err != nil {
				return err
			}
			return keyringOp(cmd, cellapi.KeyringRequest{Op: store.KeyRemove, KeyID: store.Fingerprint(key)})
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "list this cell's cluster keys (fingerprints), the primary key first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ks, err := client().ClusterKeys(ctx())
			if err != nil {
				return err
			}
			printKeyring(cmd, ks)
			return nil
		},
	}
	for _, sub := range []*cobra.Command{install, use, remove} {
		operatorKeyFlag(sub)
	}
	c.AddCommand(install, use, remove, list)
	return c
}

func keyringOp(cmd *cobra.Command, op cellapi.KeyringRequest) error {
	priv, err := signer()
	if err != nil {
		return err
	}
	ks, err := cell.ClusterKeyOp(ctx(), client(), priv, op)
	if err != nil {
		return err
	}
	printKeyring(cmd, ks)
	return nil
}

func printKeyring(cmd *cobra.Command, ks *cellapi.KeyringStatus) {
	for i, k := range ks.Keys {
		mark := ""
		if i == 0 {
			mark = " (primary)"
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s%s\n", k, mark)
	}
}

// readKeyFile reads a cluster key file: 32 raw bytes or their base64.
func readKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) == 32 {
		return b, nil
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("%s: a cluster key is 32 bytes (raw or base64)", path)
	}
	return k, nil
}

// writeNewKey writes key to path (0600); an existing file is an error.
func writeNewKey(path string, key []byte) error {
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s exists: choose another --out", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, key, 0o600)
}
