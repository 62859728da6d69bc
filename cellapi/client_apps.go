package cellapi

import (
	"context"
	"net/http"
)

// Apps returns the app names the agent knows (GET /v1/apps).
func (c *Client) Apps(ctx context.Context) ([]string, error) {
	var l AppList
	return l.Apps, c.do(ctx, http.MethodGet, "/v1/apps", nil, &l)
}
