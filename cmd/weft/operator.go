package main

import (
	"crypto/ed25519"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/cell"
)

// operatorKeyPath is the --operator-key flag of the commands that change
// policy or the cluster keyring (see operatorKeyFlag).
var operatorKeyPath string

// operatorKeyFlag adds --operator-key to c (a policy- or keyring-changing
// command).
func operatorKeyFlag(c *cobra.Command) {
	c.Flags().StringVar(&operatorKeyPath, "operator-key", "",
		"sign with this operator key file (env WEFT_OPERATOR_KEY); without one the local agent signs, if its state dir holds operator.key")
}

// signer returns the operator key to sign changes with: --operator-key,
// else $WEFT_OPERATOR_KEY, else nil, meaning that the local agent signs
// with its own operator key (and refuses if it holds none).
func signer() (ed25519.PrivateKey, error) {
	path, from := operatorKeyPath, "--operator-key"
	if path == "" {
		path, from = os.Getenv("WEFT_OPERATOR_KEY"), "WEFT_OPERATOR_KEY"
	}
	if path == "" {
		return nil, nil
	}
	k, err := cell.ReadOperatorKey(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	return k, nil
}
