package cell

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/weft-net/weft/attach"
	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh"
)

// Attachments: containers whose network namespace a container runtime made,
// joined through the CNI plugin (cmd/weft-cni). The agent gives them an IP,
// registers them like `weft container create` does, and connects the
// runtime's namespace with a veth pair. An attachment is keyed as the CNI
// spec keys it, by network name, container id and interface name; it is
// registered as attach.AttachmentName "NETWORK/ID/IFNAME".
//
//	POST   /v1/attachments        AttachRequest -> Attachment (201)
//	GET    /v1/attachments/{id}?network=NET&ifname=NAME[&netns=PATH] ->
//	       Attachment; with netns, the interface in it is checked too (409
//	       when it is wrong)
//	DELETE /v1/attachments/{id}?network=NET&ifname=NAME   204, also when
//	       there is nothing to delete
//	POST   /v1/attachments/gc     GCRequest -> GCResult: removes the
//	       attachments of the network that are not listed as valid

func (a *Agent) handleAttach(w http.ResponseWriter, r *http.Request) {
	var req cellapi.AttachRequest
	if !readJSON(w, r, &req) {
		return
	}
	if !validApp(w, req.App) {
		return
	}
	name, err := attach.AttachmentName(req.Network, req.ContainerID, req.IfName)
	if err != nil {
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
	if a.refuseInConflict(w) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refuseWhileRenumberingLocked(w) {
		return
	}
	local := a.localContainers()
	for _, e := range local {
		if e.Name == name {
			writeError(w, http.StatusConflict, "interface %s of container %q is attached already on network %s of cell %s (app %s, %v)",
				req.IfName, req.ContainerID, req.Network, a.cfg.Name, e.App, e.IP)
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
	att, err := a.ov.AttachNetns(name, req.Netns, req.IfName, ip)
	switch {
	case errors.Is(err, attach.ErrContainerExists), errors.Is(err, attach.ErrInterfaceExists):
		writeError(w, http.StatusConflict, "attach %s: %v", name, err)
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, "attach %s: %v", name, err)
		return
	}
	if err := a.labelLocked(name, req.App); err != nil {
		a.ov.DetachNetns(name)
		writeError(w, http.StatusInternalServerError, "attach %s: %v", name, err)
		return
	}
	if err := a.mesh.AddEndpoint(mesh.Endpoint{IP: ip, App: req.App, Name: name}); err != nil {
		a.ov.DetachNetns(name)
		writeError(w, registerStatus(err), "register %s: %v", name, err)
		return
	}
	a.reconcileLocked()
	a.log.Info("container attached", "attachment", name, "app", req.App, "ip", ip, "netns", req.Netns)
	writeJSON(w, http.StatusCreated, a.attachmentOf(name, req.App, att))
}

// attachmentName is the registered name of the attachment a GET or DELETE
// names: the container id in the path, network and ifname in the query.
func attachmentName(w http.ResponseWriter, r *http.Request) (string, bool) {
	q := r.URL.Query()
	name, err := attach.AttachmentName(q.Get("network"), r.PathValue("id"), q.Get("ifname"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v (an attachment is named by its network, container id and interface)", err)
		return "", false
	}
	return name, true
}

func (a *Agent) attachmentOf(name, app string, att attach.Attachment) cellapi.Attachment {
	_, id, ifname, _ := attach.ParseAttachmentName(name)
	out := cellapi.Attachment{
		Name: name, ContainerID: id, App: app, IP: att.IP.String(), Gateway: attach.Gateway.String(),
		IfName: ifname, HostVeth: att.HostVeth,
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
	name, ok := attachmentName(w, r)
	if !ok {
		return
	}
	nsPath := r.URL.Query().Get("netns")
	a.waitRecovered(r.Context())
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.localContainers() {
		if e.Name != name {
			continue
		}
		att := attach.Attachment{HostVeth: attach.HostVethName(name), IP: e.IP}
		if nsPath != "" {
			if a.ov == nil {
				writeError(w, http.StatusServiceUnavailable, "cell %s has no data plane yet", a.cfg.Name)
				return
			}
			_, _, ifname, _ := attach.ParseAttachmentName(name)
			if err := a.ov.CheckNetns(name, nsPath, ifname, e.IP); err != nil {
				writeError(w, http.StatusConflict, "%s: %v", name, err)
				return
			}
		}
		writeJSON(w, http.StatusOK, a.attachmentOf(name, e.App, att))
		return
	}
	writeError(w, http.StatusNotFound, "no attachment %s on cell %s", name, a.cfg.Name)
}

// handleDetach unregisters one attachment and removes its veth pair. Doing
// it again, or for an attachment that never was, is not an error (CNI DEL);
// other interfaces of the same container stay.
func (a *Agent) handleDetach(w http.ResponseWriter, r *http.Request) {
	name, ok := attachmentName(w, r)
	if !ok {
		return
	}
	a.waitRecovered(r.Context())
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.detachLocked(name); err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// detachLocked unregisters attachment name and removes its veth pair;
// neither needs to exist. Needs a.mu.
func (a *Agent) detachLocked(name string) error {
	e, found, err := a.unregisterLocked(name)
	if err != nil {
		return err
	}
	if found {
		a.log.Info("container detached", "attachment", name, "ip", e.IP)
	}
	if a.ov != nil {
		if err := a.ov.DetachNetns(name); err != nil {
			return fmt.Errorf("detach %s: %w", name, err)
		}
	}
	return nil
}

// handleGC removes the attachments of a network that the runtime no longer
// knows (CNI GC): every local attachment registered under that network, or
// found in the kernel with a label of it, that is not listed as valid.
// Containers made by `weft container create` are never touched.
func (a *Agent) handleGC(w http.ResponseWriter, r *http.Request) {
	var req cellapi.GCRequest
	if !readJSON(w, r, &req) {
		return
	}
	valid := map[string]bool{}
	for _, v := range req.Valid {
		name, err := attach.AttachmentName(req.Network, v.ContainerID, v.IfName)
		if err != nil {
			writeError(w, http.StatusBadRequest, "valid attachment %q %q: %v", v.ContainerID, v.IfName, err)
			return
		}
		valid[name] = true
	}
	if _, err := attach.AttachmentName(req.Network, "x", "x"); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	a.waitRecovered(r.Context())
	a.mu.Lock()
	defer a.mu.Unlock()
	stale := map[string]bool{}
	for _, e := range a.localContainers() {
		stale[e.Name] = true
	}
	if a.ov != nil {
		found, err := a.ov.FindAttachments()
		if err != nil {
			writeError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		for _, f := range found {
			stale[f.Name] = true
		}
	}
	res := cellapi.GCResult{Removed: []string{}}
	for name := range stale {
		network, _, _, ok := attach.ParseAttachmentName(name)
		if !ok || network != req.Network || valid[name] {
			continue
		}
		if err := a.detachLocked(name); err != nil {
			writeError(w, http.StatusInternalServerError, "gc: %v (removed before: %v)", err, res.Removed)
			return
		}
		res.Removed = append(res.Removed, name)
	}
	slices.Sort(res.Removed)
	if len(res.Removed) > 0 {
		a.log.Info("stale attachments removed (CNI GC)", "network", req.Network, "removed", res.Removed)
	}
	writeJSON(w, http.StatusOK, res)
}
