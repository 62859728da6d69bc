package cellapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"syscall"
)

// FlowLogs reports whether the agent writes flow logs.
func (c *Client) FlowLogs(ctx context.Context) (bool, error) {
	var st FlowLogState
	err := c.do(ctx, http.MethodGet, "/v1/flow-logs", nil, &st)
	return st.Enabled, err
}

// SetFlowLogs switches the agent's flow logs on or off.
func (c *Client) SetFlowLogs(ctx context.Context, on bool) error {
	return c.do(ctx, http.MethodPut, "/v1/flow-logs", FlowLogState{Enabled: on}, nil)
}

// TailFlowLogs streams the agent's flow-log lines (GET /v1/flow-logs/tail)
// into w, one JSON line each, until ctx is done or the agent goes: the
// lines the agent kept, then new ones. app and verdict filter ("": all);
// verdict is a verdict name, "allowed" or "denied".
func (c *Client) TailFlowLogs(ctx context.Context, app, verdict string, w io.Writer) error {
	q := url.Values{}
	if app != "" {
		q.Set("app", app)
	}
	if verdict != "" {
		q.Set("verdict", verdict)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://weft/v1/flow-logs/tail?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	hc := *c.hc
	hc.Timeout = 0 // a stream: ctx ends it
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("no weft agent at %s (is `weft agent` running? set --socket or WEFT_SOCKET): %w", c.socket, err)
		}
		return fmt.Errorf("agent at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e ErrorBody
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("agent answered %s: %s", resp.Status, bytes.TrimSpace(data))
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if _, err := fmt.Fprintf(w, "%s\n", sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("agent at %s: flow-log stream: %w", c.socket, err)
	}
	return nil
}
