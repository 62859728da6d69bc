package cell

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/weft-net/weft/mesh"
)

// ApplyPolicyChanges sends operator-signed policy changes to the agent; the
// results are in the order of changes. A change refused by the agent is a
// result with its code and error, not an error of the call.
func (c *Client) ApplyPolicyChanges(ctx context.Context, changes []SignedPolicyChange) ([]PolicyChangeResult, error) {
	return c.PolicyChanges(ctx, PolicyChangesRequest{Changes: changes})
}

// PolicyChanges sends req (see PolicyChangesRequest: changes signed or for
// the agent to sign, applied as one batch); the results are in the order of
// req.Changes. A batch refused whole (412: too large a removal) is a
// *StatusError.
func (c *Client) PolicyChanges(ctx context.Context, req PolicyChangesRequest) ([]PolicyChangeResult, error) {
	var res PolicyChangesResponse
	if err := c.do(ctx, http.MethodPost, "/v1/policy-changes", req, &res); err != nil {
		return nil, err
	}
	if len(res.Results) != len(req.Changes) {
		return nil, fmt.Errorf("agent answered %d results for %d policy changes", len(res.Results), len(req.Changes))
	}
	return res.Results, nil
}

// CLIOrigin is the origin of changes signed by the CLI: "cli@HOSTNAME".
func CLIOrigin() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "unknown"
	}
	return "cli@" + h
}

// SignedPolicy adds (present) or removes r, signed with priv. When the agent
// holds a newer change of r (the signer's clock is behind), it re-signs once
// above that. The result's Code says what happened (see PolicyChangeResult);
// codes of 400 and above other than 404 are returned as a *StatusError.
func (c *Client) SignedPolicy(ctx context.Context, priv ed25519.PrivateKey, r PolicyRule, present bool) (PolicyChangeResult, error) {
	rule, err := r.Rule()
	if err != nil {
		return PolicyChangeResult{}, err
	}
	got, err := c.applyOneChange(ctx, true, func(above uint64) SignedPolicyChange {
		return SignPolicyChange(rule, present, CLIOrigin(), above, priv)
	})
	if err == nil && got.Code >= 400 && got.Code != http.StatusNotFound {
		err = &StatusError{Code: got.Code, Message: got.Error}
	}
	return got, err
}

// applyOneChange applies the change mk(0). When it is signed (by the
// caller) and the agent holds a newer change of the same rule (409: the
// signer's clock is behind), it applies mk(that stamp) once more.
func (c *Client) applyOneChange(ctx context.Context, signed bool, mk func(above uint64) SignedPolicyChange) (PolicyChangeResult, error) {
	var above uint64
	for try := 0; ; try++ {
		res, err := c.ApplyPolicyChanges(ctx, []SignedPolicyChange{mk(above)})
		if err != nil {
			return PolicyChangeResult{}, err
		}
		got := res[0]
		if got.Code == http.StatusConflict && try == 0 && signed {
			above = got.CurrentStamp
			continue
		}
		return got, nil
	}
}

// ClusterKeys lists the agent's cluster keyring.
func (c *Client) ClusterKeys(ctx context.Context) (*KeyringStatus, error) {
	var ks KeyringStatus
	return &ks, c.do(ctx, http.MethodGet, "/v1/cluster-keys", nil, &ks)
}

// ClusterKeyOp applies a keyring operation: signed with priv when it is not
// nil, else signed by the agent with its own operator key.
func (c *Client) ClusterKeyOp(ctx context.Context, priv ed25519.PrivateKey, op KeyringRequest) (*KeyringStatus, error) {
	if priv != nil {
		op.Stamp = uint64(time.Now().UnixNano())
		mesh.SignKeyringOp(&op, priv)
	} else if len(op.Sig) > 0 {
		return nil, errors.New("ClusterKeyOp: op is already signed")
	}
	var ks KeyringStatus
	return &ks, c.do(ctx, http.MethodPost, "/v1/cluster-keys", op, &ks)
}
