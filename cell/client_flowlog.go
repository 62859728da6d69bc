package cell

import (
	"context"
	"net/http"
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
