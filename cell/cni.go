package cell

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/weft-net/weft/mesh"
	"github.com/weft-net/weft/overlay"
)

// Attachments: containers whose network namespace a container runtime made,
// joined through the CNI plugin (cmd/weft-cni). The agent gives them an IP,
// registers them like `weft container create` does, and connects the
// runtime's namespace with a veth pair named after the container id.
//
//	POST   /v1/attachments        AttachRequest -> Attachment (201)
//	GET    /v1/attachments/{id}[?netns=PATH&ifname=NAME] -> Attachment; with
//	       netns, the interface in it is checked too (409 when it is wrong)
//	DELETE /v1/attachments/{id}   204, also when there is nothing to delete

// AttachRequest asks the agent to attach an existing network namespace.
type AttachRequest struct {
	ContainerID string `json:"container_id"`
	Netns       string `json:"netns"`  // path, e.g. /proc/PID/ns/net or /run/netns/NAME
	IfName      string `json:"ifname"` // the interface to create inside it
	App         string `json:"app"`
}

// Attachment is an attached container.
type Attachment struct {
	ContainerID string   `json:"container_id"`
	App         string   `json:"app"`
	IP          string   `json:"ip"`      // the container's overlay address (a /32)
	Gateway     string   `json:"gateway"` // its default gateway, overlay.Gateway
	IfName      string   `json:"ifname,omitempty"`
	MAC         string   `json:"mac,omitempty"`
	HostVeth    string   `json:"host_veth"`
	HostMAC     string   `json:"host_mac,omitempty"`
	Nameservers []string `json:"nameservers,omitempty"` // the cell's DNS server, for the CNI result
}

func (a *Agent) handleAttach(w http.ResponseWriter, r *http.Request) {
	var req AttachRequest
	if !readJSON(w, r, &req) {
		return
	}
	if !validApp(w, req.App) {
		return
	}
	if err := overlay.ValidAttachmentID(req.ContainerID); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := overlay.ValidIfName(req.IfName); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if req.Netns == "" {
		writeError(w, http.StatusBadRequest, "no network namespace path")
		return
	}
	if !a.waitReady(r.Context(), 15*time.Second) {
		writeError(w, http.StatusServiceUnavailable, "cell %s has no subnet lease yet (still joining the mesh)", a.cfg.Name)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	local := a.localContainers()
	for _, e := range local {
		if e.Name == req.ContainerID {
			writeError(w, http.StatusConflict, "container %q is attached already on cell %s (app %s, %v)", e.Name, a.cfg.Name, e.App, e.IP)
			return
		}
	}
	ip, ok, err := a.freeIPLocked(local)
	switch {
	case err != nil:
		writeError(w, http.StatusInternalServerError, "pick an address: %v", err)
		return
	case !ok:
		writeError(w, http.StatusInsufficientStorage, "subnet %v of cell %s is full", a.mesh.Subnet(), a.cfg.Name)
		return
	}
	att, err := a.ov.AttachNetns(req.ContainerID, req.Netns, req.IfName, ip)
	switch {
	case errors.Is(err, overlay.ErrContainerExists), errors.Is(err, overlay.ErrInterfaceExists):
		writeError(w, http.StatusConflict, "attach container %s: %v", req.ContainerID, err)
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, "attach container %s: %v", req.ContainerID, err)
		return
	}
	if err := a.labelLocked(req.ContainerID, req.App); err != nil {
		a.ov.DetachNetns(req.ContainerID)
		writeError(w, http.StatusInternalServerError, "attach container %s: %v", req.ContainerID, err)
		return
	}
	if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: ip, App: req.App, Name: req.ContainerID}); err != nil {
		a.ov.DetachNetns(req.ContainerID)
		writeError(w, http.StatusInternalServerError, "register container %s: %v", req.ContainerID, err)
		return
	}
	a.compileLocked()
	a.log.Info("container attached", "container", req.ContainerID, "app", req.App, "ip", ip,
		"netns", req.Netns, "ifname", req.IfName)
	writeJSON(w, http.StatusCreated, a.attachmentOf(req.ContainerID, req.App, att))
}

func (a *Agent) attachmentOf(id, app string, att overlay.Attachment) Attachment {
	out := Attachment{
		ContainerID: id, App: app, IP: att.IP.String(), Gateway: overlay.Gateway.String(),
		IfName: att.IfName, HostVeth: att.HostVeth,
	}
	if a.cfg.DNSAddr.IsValid() {
		out.Nameservers = []string{a.cfg.DNSAddr.String()}
	}
	if att.MAC != nil {
		out.MAC = att.MAC.String()
	}
	if att.HostMAC != nil {
		out.HostMAC = att.HostMAC.String()
	}
	return out
}

func (a *Agent) handleGetAttachment(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	nsPath, ifname := r.URL.Query().Get("netns"), r.URL.Query().Get("ifname")
	a.waitRecovered(r.Context())
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.localContainers() {
		if e.Name != id {
			continue
		}
		att := overlay.Attachment{HostVeth: overlay.HostVethName(id), IfName: ifname, IP: e.IP}
		if nsPath != "" {
			if a.ov == nil {
				writeError(w, http.StatusServiceUnavailable, "cell %s has no data plane yet", a.cfg.Name)
				return
			}
			if err := a.ov.CheckNetns(id, nsPath, ifname, e.IP); err != nil {
				writeError(w, http.StatusConflict, "container %s: %v", id, err)
				return
			}
		}
		writeJSON(w, http.StatusOK, a.attachmentOf(id, e.App, att))
		return
	}
	writeError(w, http.StatusNotFound, "no container %q on cell %s", id, a.cfg.Name)
}

// handleDetach unregisters container id and removes its veth pair. Doing it
// again, or for a container that never was, is not an error (CNI DEL).
func (a *Agent) handleDetach(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	a.waitRecovered(r.Context())
	a.mu.Lock()
	defer a.mu.Unlock()
	e, found, err := a.unregisterLocked(id)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if found {
		a.log.Info("container detached", "container", id, "ip", e.IP)
	}
	if a.ov != nil {
		if err := a.ov.DetachNetns(id); err != nil {
			writeError(w, http.StatusInternalServerError, "detach container %s: %v", id, err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// Attach asks the agent to attach an existing network namespace.
func (c *Client) Attach(ctx context.Context, req AttachRequest) (*Attachment, error) {
	var att Attachment
	return &att, c.do(ctx, http.MethodPost, "/v1/attachments", req, &att)
}

// Attachment returns container id; with nsPath it also checks the interface
// ifname in that namespace. A missing container is a *StatusError with code
// 404, a broken attachment one with code 409.
func (c *Client) Attachment(ctx context.Context, id, nsPath, ifname string) (*Attachment, error) {
	q := url.Values{}
	if nsPath != "" {
		q.Set("netns", nsPath)
		q.Set("ifname", ifname)
	}
	path := "/v1/attachments/" + url.PathEscape(id)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var att Attachment
	return &att, c.do(ctx, http.MethodGet, path, nil, &att)
}

// Detach removes container id; it succeeds when there is nothing to remove.
func (c *Client) Detach(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/attachments/"+url.PathEscape(id), nil, nil)
}
