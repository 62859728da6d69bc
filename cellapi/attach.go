package cellapi

import (
	"context"
	"net/http"
	"net/url"
)

// Attachments: containers whose network namespace a container runtime made,
// joined through the CNI plugin (cmd/weft-cni). An attachment is keyed as
// the CNI spec keys it, by network name, container id and interface name;
// the agent registers it as "NETWORK/ID/IFNAME".
//
//	POST   /v1/attachments        AttachRequest -> Attachment (201)
//	GET    /v1/attachments/{id}?network=NET&ifname=NAME[&netns=PATH] ->
//	       Attachment; with netns, the interface in it is checked too (409
//	       when it is wrong)
//	DELETE /v1/attachments/{id}?network=NET&ifname=NAME   204, also when
//	       there is nothing to delete
//	POST   /v1/attachments/gc     GCRequest -> GCResult: removes the
//	       attachments of the network that are not listed as valid

// AttachRequest asks the agent to attach an existing network namespace.
type AttachRequest struct {
	Network     string `json:"network"` // the CNI network name
	ContainerID string `json:"container_id"`
	Netns       string `json:"netns"`  // path, e.g. /proc/PID/ns/net or /run/netns/NAME
	IfName      string `json:"ifname"` // the interface to create inside it
	App         string `json:"app"`
}

// Attachment is an attached container interface.
type Attachment struct {
	Name        string   `json:"name"` // as registered: NETWORK/ID/IFNAME
	ContainerID string   `json:"container_id"`
	App         string   `json:"app"`
	IP          string   `json:"ip"`      // the container's overlay address (a /32)
	Gateway     string   `json:"gateway"` // its default gateway, attach.Gateway
	IfName      string   `json:"ifname,omitempty"`
	MAC         string   `json:"mac,omitempty"`
	HostVeth    string   `json:"host_veth"`
	HostMAC     string   `json:"host_mac,omitempty"`
	Nameservers []string `json:"nameservers,omitempty"` // the cell's DNS server, for the CNI result
}

// GCAttachment names one attachment of a network, as the CNI spec's
// cni.dev/valid-attachments does.
type GCAttachment struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname"`
}

// GCRequest asks the agent to remove every attachment of Network that is
// not in Valid (CNI GC).
type GCRequest struct {
	Network string         `json:"network"`
	Valid   []GCAttachment `json:"valid"`
}

// GCResult lists what a GC removed (attachment names).
type GCResult struct {
	Removed []string `json:"removed"`
}

// Attach asks the agent to attach an existing network namespace.
func (c *Client) Attach(ctx context.Context, req AttachRequest) (*Attachment, error) {
	var att Attachment
	return &att, c.do(ctx, http.MethodPost, "/v1/attachments", req, &att)
}

// AttachmentRef names an attachment: network, container id, interface.
type AttachmentRef struct {
	Network, ContainerID, IfName string
}

func (ref AttachmentRef) path(extra url.Values) string {
	q := url.Values{"network": {ref.Network}, "ifname": {ref.IfName}}
	for k, v := range extra {
		q[k] = v
	}
	return "/v1/attachments/" + url.PathEscape(ref.ContainerID) + "?" + q.Encode()
}

// Attachment returns attachment ref; with nsPath it also checks its
// interface in that namespace. A missing attachment is a *StatusError with
// code 404, a broken one with code 409.
func (c *Client) Attachment(ctx context.Context, ref AttachmentRef, nsPath string) (*Attachment, error) {
	q := url.Values{}
	if nsPath != "" {
		q.Set("netns", nsPath)
	}
	var att Attachment
	return &att, c.do(ctx, http.MethodGet, ref.path(q), nil, &att)
}

// Detach removes attachment ref; it succeeds when there is nothing to
// remove.
func (c *Client) Detach(ctx context.Context, ref AttachmentRef) error {
	return c.do(ctx, http.MethodDelete, ref.path(nil), nil, nil)
}

// GC removes the attachments of a network that are not in req.Valid.
func (c *Client) GC(ctx context.Context, req GCRequest) (*GCResult, error) {
	var res GCResult
	return &res, c.do(ctx, http.MethodPost, "/v1/attachments/gc", req, &res)
}
