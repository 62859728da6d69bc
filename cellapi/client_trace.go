package cellapi

import (
	"context"
	"net/http"
)

// Trace asks the agent whether a flow would pass, and why (POST /v1/trace).
func (c *Client) Trace(ctx context.Context, req TraceRequest) (*TraceResult, error) {
	var res TraceResult
	return &res, c.do(ctx, http.MethodPost, "/v1/trace", req, &res)
}
