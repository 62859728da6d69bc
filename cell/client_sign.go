package cell

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"net/netip"
	"time"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh/store"
)

// The client calls that sign a change with an operator key: signing needs
// the mesh's signature encoding, which cellapi does not link.

// SignedPolicy adds (present) or removes r through c, signed with priv.
// When the agent holds a newer change of r (the signer's clock is behind),
// it re-signs once above that. The result's Code says what happened (see
// cellapi.PolicyChangeResult); codes of 400 and above other than 404 are
// returned as a *cellapi.StatusError.
func SignedPolicy(ctx context.Context, c *cellapi.Client, priv ed25519.PrivateKey, r cellapi.PolicyRule, present bool) (cellapi.PolicyChangeResult, error) {
	rule, err := r.Rule()
	if err != nil {
		return cellapi.PolicyChangeResult{}, err
	}
	got, err := c.ApplyChange(ctx, true, func(above uint64) cellapi.SignedPolicyChange {
		return SignPolicyChange(rule, present, cellapi.CLIOrigin(), above, priv)
	})
	if err == nil && got.Code >= 400 && got.Code != http.StatusNotFound {
		err = &cellapi.StatusError{Code: got.Code, Message: got.Error}
	}
	return got, err
}

// ChangeEgressRule adds (present) or removes r through c: signed with priv
// when it is not nil (re-signed once above a newer change the agent
// holds), else by the agent. A refused change (400: bad rule or overlap,
// 403, 404: not there) is a *cellapi.StatusError; the result carries the
// agent's warnings.
func ChangeEgressRule(ctx context.Context, c *cellapi.Client, priv ed25519.PrivateKey, r cellapi.EgressRule, present bool) (cellapi.PolicyChangeResult, error) {
	rule, err := r.Rule(netip.Prefix{})
	if err != nil {
		return cellapi.PolicyChangeResult{}, err
	}
	got, err := c.ApplyChange(ctx, priv != nil, func(above uint64) cellapi.SignedPolicyChange {
		if priv == nil {
			return cellapi.SignedPolicyChange{Egress: &r, Present: present}
		}
		return SignEgressChange(rule, present, cellapi.CLIOrigin(), above, priv)
	})
	if err == nil && got.Code >= 400 {
		err = &cellapi.StatusError{Code: got.Code, Message: got.Error}
	}
	return got, err
}

// ChangeIngressRule adds (present) or removes r as ChangeEgressRule does.
func ChangeIngressRule(ctx context.Context, c *cellapi.Client, priv ed25519.PrivateKey, r cellapi.IngressRule, present bool) (cellapi.PolicyChangeResult, error) {
	rule, err := r.Rule(netip.Prefix{})
	if err != nil {
		return cellapi.PolicyChangeResult{}, err
	}
	got, err := c.ApplyChange(ctx, priv != nil, func(above uint64) cellapi.SignedPolicyChange {
		if priv == nil {
			return cellapi.SignedPolicyChange{Ingress: &r, Present: present}
		}
		return SignIngressChange(rule, present, cellapi.CLIOrigin(), above, priv)
	})
	if err == nil && got.Code >= 400 {
		err = &cellapi.StatusError{Code: got.Code, Message: got.Error}
	}
	return got, err
}

// ChangeRoute maps (present) or unmaps rt through c: signed with priv when
// it is not nil (re-signed once above the agent's stamp if the signer's
// clock is behind), else by the agent. A missing route is a
// *cellapi.StatusError with 404.
func ChangeRoute(ctx context.Context, c *cellapi.Client, priv ed25519.PrivateKey, rt cellapi.InternalRoute, present bool) error {
	req := cellapi.RouteChangeRequest{Route: rt, Present: present}
	var above uint64
	for try := 0; ; try++ {
		if priv != nil {
			ch := store.RouteChange{Route: meshRoute(rt), Present: present,
				Stamp: max(uint64(time.Now().UnixNano()), above+1), Origin: cellapi.CLIOrigin()}
			store.SignRouteChange(&ch, priv)
			req.Stamp, req.Origin, req.Signer, req.Sig = ch.Stamp, ch.Origin, ch.Signer, ch.Sig
		}
		err := c.RouteChange(ctx, req)
		var se *cellapi.StatusError
		if priv != nil && try == 0 && errors.As(err, &se) && se.Code == http.StatusConflict {
			above = se.CurrentStamp
			continue
		}
		return err
	}
}

// ClusterKeyOp applies a keyring operation through c: signed with priv
// when it is not nil, else signed by the agent with its own operator key.
func ClusterKeyOp(ctx context.Context, c *cellapi.Client, priv ed25519.PrivateKey, op cellapi.KeyringRequest) (*cellapi.KeyringStatus, error) {
	if priv != nil {
		kop := store.KeyringOp(op)
		kop.Stamp = uint64(time.Now().UnixNano())
		store.SignKeyringOp(&kop, priv)
		op = cellapi.KeyringRequest(kop)
	} else if len(op.Sig) > 0 {
		return nil, errors.New("ClusterKeyOp: op is already signed")
	}
	return c.ClusterKeyOp(ctx, op)
}
