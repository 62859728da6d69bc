package cellapi

import (
	"context"
	"fmt"
	"net/http"
	"os"
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

// ApplyChange applies the change mk(0). When it is signed (by the caller)
// and the agent holds a newer change of the same rule (409: the signer's
// clock is behind), it applies mk(that stamp) once more.
func (c *Client) ApplyChange(ctx context.Context, signed bool, mk func(above uint64) SignedPolicyChange) (PolicyChangeResult, error) {
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

// EgressRules lists the cluster's egress rules.
func (c *Client) EgressRules(ctx context.Context) ([]EgressRule, error) {
	var l EgressRuleList
	return l.EgressRules, c.do(ctx, http.MethodGet, "/v1/egress-rules", nil, &l)
}

// IngressRules lists the cluster's ingress rules.
func (c *Client) IngressRules(ctx context.Context) ([]IngressRule, error) {
	var l IngressRuleList
	return l.IngressRules, c.do(ctx, http.MethodGet, "/v1/ingress-rules", nil, &l)
}

// Routes lists the internal routes.
func (c *Client) Routes(ctx context.Context) ([]InternalRoute, error) {
	var l RouteList
	return l.Routes, c.do(ctx, http.MethodGet, "/v1/routes", nil, &l)
}

// RouteChange sends req as it is (signed, or unsigned for the agent to
// sign). A missing route is a *StatusError with 404, a stale signed change
// one with 409 and the agent's stamp in CurrentStamp.
func (c *Client) RouteChange(ctx context.Context, req RouteChangeRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/route-changes", req, nil)
}

// ClusterKeys lists the agent's cluster keyring.
func (c *Client) ClusterKeys(ctx context.Context) (*KeyringStatus, error) {
	var ks KeyringStatus
	return &ks, c.do(ctx, http.MethodGet, "/v1/cluster-keys", nil, &ks)
}

// ClusterKeyOp sends a keyring operation as it is: signed by an operator
// key, or without Sig for the agent to sign with its own.
func (c *Client) ClusterKeyOp(ctx context.Context, op KeyringRequest) (*KeyringStatus, error) {
	var ks KeyringStatus
	return &ks, c.do(ctx, http.MethodPost, "/v1/cluster-keys", op, &ks)
}
