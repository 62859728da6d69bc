package cellapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"
)

// DefaultSocket is where the agent serves its local API.
const DefaultSocket = "/run/weft/weft.sock"

// Client talks to the local agent over its unix socket. Safe for concurrent
// use.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the agent serving socket.
func NewClient(socket string) *Client {
	return &Client{
		socket: socket,
		hc: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", socket)
				},
			},
		},
	}
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// CreateContainer asks for a new container.
func (c *Client) CreateContainer(ctx context.Context, req ContainerRequest) (*Container, error) {
	var ct Container
	return &ct, c.do(ctx, http.MethodPost, "/v1/containers", req, &ct)
}

// DeleteContainer deletes container name.
func (c *Client) DeleteContainer(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/containers/"+url.PathEscape(name), nil, nil)
}

// Containers lists the containers of this cell.
func (c *Client) Containers(ctx context.Context) ([]Container, error) {
	var cs []Container
	return cs, c.do(ctx, http.MethodGet, "/v1/containers", nil, &cs)
}

// AddPolicy adds a rule; created is false when it existed already.
func (c *Client) AddPolicy(ctx context.Context, r PolicyRule) (created bool, err error) {
	code, err := c.doCode(ctx, http.MethodPost, "/v1/policies", r, nil)
	return code == http.StatusCreated, err
}

// RemovePolicy removes a rule; a missing rule is a *StatusError with code 404.
func (c *Client) RemovePolicy(ctx context.Context, r PolicyRule) error {
	return c.do(ctx, http.MethodDelete, "/v1/policies", r, nil)
}

// Policies lists the rules, only those with the given source app if source is
// not empty.
func (c *Client) Policies(ctx context.Context, source string) ([]PolicyRule, error) {
	path := "/v1/policies"
	if source != "" {
		path += "?source=" + url.QueryEscape(source)
	}
	var l PolicyList
	return l.Policies, c.do(ctx, http.MethodGet, path, nil, &l)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	_, err := c.doCode(ctx, method, path, in, out)
	return err
}

func (c *Client) doCode(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://weft"+path, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return 0, fmt.Errorf("no weft agent at %s (is `weft agent` running? set --socket or WEFT_SOCKET): %w", c.socket, err)
		}
		return 0, fmt.Errorf("agent at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode >= 400 {
		var e ErrorBody
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("agent answered %s: %s", resp.Status, bytes.TrimSpace(data))
		}
		return resp.StatusCode, &StatusError{Code: resp.StatusCode, Message: e.Error, CurrentStamp: e.CurrentStamp}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode agent answer to %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// PolicyEnforcement reports whether the agent enforces the policy.
func (c *Client) PolicyEnforcement(ctx context.Context) (EnforcementState, error) {
	var st EnforcementState
	err := c.do(ctx, http.MethodGet, "/v1/policy-enforcement", nil, &st)
	return st, err
}

// SetPolicyEnforcement switches the agent's policy enforcement on or off.
func (c *Client) SetPolicyEnforcement(ctx context.Context, on bool) (EnforcementState, error) {
	var st EnforcementState
	err := c.do(ctx, http.MethodPut, "/v1/policy-enforcement", EnforcementState{Enabled: on}, &st)
	return st, err
}
