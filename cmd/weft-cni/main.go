// Command weft-cni is a CNI plugin (spec 1.0.0, STATUS from 1.1.0) that joins
// containers made by a container runtime (containerd, podman, nerdctl, or
// the reference client cnitool) to the weft overlay. It does no network work
// itself: it asks the local agent, over its unix socket, for an overlay IP,
// the registration of the container's app and the veth into the runtime's
// namespace, and returns the result.
//
// The app comes from CNI_ARGS ("APP=appA"), the runtime config ({"app":
// "appA"}, capability "app"), the pod annotation weft.dev/app or the pod's
// name (app.go). The plugin config may name the agent
// socket ("socket", default /run/weft/weft.sock). docs/cni.md has an example
// conflist and a cnitool session.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weft-net/weft/cellapi"
)

// Error codes of our own (CNI reserves 0-99).
const (
	errAgent      uint = 100 // the agent refused or failed the request
	errAttachment uint = 101 // CHECK: the container's interface is not as ADD left it
)

// NetConf is the plugin's configuration.
type NetConf struct {
	types.PluginConf
	Socket string `json:"socket,omitempty"`
	// libcni up to 1.2 also sent the valid attachments of a GC under this
	// key (containernetworking/cni#1101); read when the right one is absent.
	OldValidAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
	RuntimeConfig       struct {
		App            string            `json:"app,omitempty"`
		PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
	} `json:"runtimeConfig"`
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		Status: cmdStatus,
		GC:     cmdGC,
	}, version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), "CNI plugin weft-cni (weft container networking)")
}

func loadConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "weft-cni: cannot parse the network configuration", err.Error())
	}
	if conf.Socket == "" {
		conf.Socket = cellapi.DefaultSocket
	}
	return conf, nil
}

// refOf names the attachment a DEL or CHECK is about: the spec keys one by
// network, container id and interface name.
func refOf(conf *NetConf, args *skel.CmdArgs) cellapi.AttachmentRef {
	return cellapi.AttachmentRef{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

func client(conf *NetConf) *cellapi.Client { return cellapi.NewClient(conf.Socket) }

func timeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 25*time.Second)
}

// agentError turns an agent failure into a CNI error.
func agentError(op string, conf *NetConf, err error) *types.Error {
	var se *cellapi.StatusError
	switch {
	case errors.As(err, &se) && se.Code == http.StatusServiceUnavailable:
		return types.NewError(types.ErrTryAgainLater, "weft-cni: "+op+": the weft agent is not ready", se.Message)
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		return types.NewError(types.ErrUnknownContainer, "weft-cni: "+op+": unknown container", se.Message)
	case errors.As(err, &se) && se.Code == http.StatusConflict && op == "check":
		return types.NewError(errAttachment, "weft-cni: check: the container's interface is not as ADD left it", se.Message)
	case errors.As(err, &se):
		return types.NewError(errAgent, "weft-cni: "+op+": the weft agent refused", se.Message)
	}
	return types.NewError(types.ErrTryAgainLater, "weft-cni: "+op+": cannot reach the weft agent at "+conf.Socket, err.Error())
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	app, err := appOf(conf, args)
	if err != nil {
		return err
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidNetNS, "weft-cni: no network namespace (CNI_NETNS)", "")
	}
	ctx, cancel := timeout()
	defer cancel()
	att, err := client(conf).Attach(ctx, cellapi.AttachRequest{
		Network: conf.Name, ContainerID: args.ContainerID, Netns: args.Netns, IfName: args.IfName, App: app,
	})
	if err != nil {
		return agentError("add", conf, err)
	}
	result, err := resultOf(att, args.Netns)
	if err != nil {
		return types.NewError(types.ErrInternal, "weft-cni: bad answer from the agent", err.Error())
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// resultOf is the CNI result of an attachment: the cell end of the veth, the
// container end (in its sandbox), the /32 with the link-local gateway and a
// default route via it, and the cell's DNS server (internal routes such as
// APP.apps.internal resolve there).
func resultOf(att *cellapi.Attachment, netnsPath string) (*types100.Result, error) {
	ip := net.ParseIP(att.IP)
	gw := net.ParseIP(att.Gateway)
	if ip == nil || ip.To4() == nil || gw == nil {
		return nil, fmt.Errorf("ip %q gateway %q", att.IP, att.Gateway)
	}
	ctr := 1
	return &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: att.HostVeth, Mac: att.HostMAC},
			{Name: att.IfName, Mac: att.MAC, Sandbox: netnsPath},
		},
		IPs: []*types100.IPConfig{{
			Interface: &ctr,
			Address:   net.IPNet{IP: ip.To4(), Mask: net.CIDRMask(32, 32)},
			Gateway:   gw,
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw}},
		DNS:    types.DNS{Nameservers: att.Nameservers},
	}, nil
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := timeout()
	defer cancel()
	// The agent removes this interface's veth: a namespace that is already
	// gone, or an attachment it never saw, is not an error; the
	// container's other interfaces stay.
	if err := client(conf).Detach(ctx, refOf(conf, args)); err != nil {
		return agentError("del", conf, err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "weft-cni: check: cannot parse prevResult", err.Error())
	}
	ctx, cancel := timeout()
	defer cancel()
	att, err := client(conf).Attachment(ctx, refOf(conf, args), args.Netns)
	if err != nil {
		return agentError("check", conf, err)
	}
	if conf.PrevResult != nil {
		prev, err := types100.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "weft-cni: check: cannot convert prevResult", err.Error())
		}
		found := false
		for _, ipc := range prev.IPs {
			if ipc.Address.IP.String() == att.IP {
				found = true
			}
		}
		if !found {
			return types.NewError(errAttachment, "weft-cni: check: the container's IP changed",
				fmt.Sprintf("prevResult has %v, the agent has %s", prev.IPs, att.IP))
		}
	}
	if app, err := appOf(conf, args); err == nil && app != att.App {
		return types.NewError(errAttachment, "weft-cni: check: the container's app changed",
			fmt.Sprintf("asked for %s, registered as %s", app, att.App))
	}
	return nil
}

// cmdStatus reports whether the plugin can attach containers now: the agent
// answers and has a subnet lease.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := timeout()
	defer cancel()
	st, err := client(conf).Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "weft-cni: no weft agent at "+conf.Socket, err.Error())
	}
	if st.Subnet == "" {
		return types.NewError(types.ErrPluginNotAvailable, "weft-cni: the weft agent has no subnet lease yet", "cell "+st.Name)
	}
	return nil
}

// cmdGC removes every attachment of this network that is not among
// cni.dev/valid-attachments (CNI 1.1): what a runtime forgot to DEL, for
// example after a crash. A missing list means no attachment is valid.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	valid := conf.ValidAttachments
	if valid == nil {
		valid = conf.OldValidAttachments
	}
	req := cellapi.GCRequest{Network: conf.Name, Valid: []cellapi.GCAttachment{}}
	for _, v := range valid {
		req.Valid = append(req.Valid, cellapi.GCAttachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	ctx, cancel := timeout()
	defer cancel()
	if _, err := client(conf).GC(ctx, req); err != nil {
		return agentError("gc", conf, err)
	}
	return nil
}
