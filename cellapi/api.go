// Package cellapi is the local API of a weft cell: the wire types of the
// agent's HTTP+JSON unix-socket API and its client. The agent (package
// cell) serves it; the CLI and the CNI plugin are its clients. It imports
// neither the agent nor the mesh nor the data plane, so that a client
// links only the client (cmd/weft-cni's TestLinksOnlyTheClient).
package cellapi

import (
	"fmt"
	"time"

	"github.com/weft-net/weft/policy"
)

// The local API: HTTP+JSON on a root-only unix socket. The CLI is its client.
//
//	GET    /v1/status
//	GET    /v1/containers
//	POST   /v1/containers            ContainerRequest -> Container
//	DELETE /v1/containers/{name}
//	GET    /v1/policies[?source=APP] -> PolicyList
//	POST   /v1/policies              PolicyRule (201 created, 200 existed)
//	DELETE /v1/policies              PolicyRule (404 "Policy does not exist.")
//	GET    /v1/policy-enforcement    -> EnforcementState
//	PUT    /v1/policy-enforcement    EnforcementState -> EnforcementState
//
// Errors are {"error": "..."} with a 4xx status for bad requests and 5xx for
// failures of the cell.

// ContainerRequest asks the agent for a new container.
type ContainerRequest struct {
	App  string `json:"app"`
	Name string `json:"name"`
}

// Container is a container on this cell.
type Container struct {
	Name string `json:"name"`
	App  string `json:"app"`
	IP   string `json:"ip"`
	// Status is "conflict" while another cell holds an older lease of the
	// container's subnet (docs/control-plane.md, "Conflicts"): the
	// container is not reachable until it is moved; else empty.
	Status string `json:"status,omitempty"`
}

// StatusConflict is Container.Status of a container in a subnet whose
// conflict this cell lost.
const StatusConflict = "conflict"

// PortRange is the JSON form of policy.PortRange (as in CF's policy server).
type PortRange struct {
	Start uint16 `json:"start"`
	End   uint16 `json:"end"`
}

// PolicyRule is the JSON form of policy.Rule.
type PolicyRule struct {
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	Protocol    string    `json:"protocol"`
	Ports       PortRange `json:"ports"`
}

// PolicyList is the answer of GET /v1/policies.
type PolicyList struct {
	Policies []PolicyRule `json:"policies"`
}

// Rule converts to a validated policy.Rule.
func (p PolicyRule) Rule() (policy.Rule, error) {
	proto, err := policy.ParseProtocol(p.Protocol)
	if err != nil {
		return policy.Rule{}, err
	}
	r := policy.Rule{
		Source:      p.Source,
		Destination: p.Destination,
		Protocol:    proto,
		Ports:       policy.PortRange{Start: p.Ports.Start, End: p.Ports.End},
	}
	if err := r.Validate(); err != nil {
		return policy.Rule{}, err
	}
	return r, nil
}

// FromRule is the JSON form of r.
func FromRule(r policy.Rule) PolicyRule {
	return PolicyRule{
		Source:      r.Source,
		Destination: r.Destination,
		Protocol:    r.Protocol.String(),
		Ports:       PortRange{Start: r.Ports.Start, End: r.Ports.End},
	}
}

// Status is the answer of GET /v1/status.
type Status struct {
	Name       string            `json:"name"`
	Version    string            `json:"version"` // this agent's (buildinfo.Version)
	Subnet     string            `json:"subnet"`
	Overlay    string            `json:"overlay,omitempty"` // the whole overlay CIDR
	Interface  string            `json:"interface"`
	Members    []Member          `json:"members"`
	Peers      []Peer            `json:"peers"`
	Containers int               `json:"containers"`
	Policies   int               `json:"policies"`
	Flows      int               `json:"flows"`
	Verdicts   map[string]uint64 `json:"verdicts,omitempty"`
	// PartialTCPChecksums: this cell accepts TCP packets with partial
	// checksums and announces so (mesh.FeatPartialTCPChecksum).
	PartialTCPChecksums bool `json:"partial_tcp_checksums,omitempty"`
	// LeaseError says why the cell has no subnet (pool exhausted).
	LeaseError string `json:"lease_error,omitempty"`
	// SubnetConflict names the cell holding an older lease of this cell's
	// subnet (a conflict this cell lost); ConflictedContainers counts this
	// cell's containers in it (Container.Status "conflict").
	SubnetConflict       string `json:"subnet_conflict,omitempty"`
	ConflictedContainers int    `json:"conflicted_containers,omitempty"`
	// RejectedPolicyChanges counts unsigned or wrongly signed changes.
	RejectedPolicyChanges uint64 `json:"rejected_policy_changes"`

	// MemberCounts counts Members by state: alive, suspect, dead, left.
	MemberCounts map[string]int `json:"member_counts"`
	// PolicyVersion is 48 bits of a hash of the policy set (PolicyVersion):
	// equal on cells that enforce the same rules.
	PolicyVersion uint64 `json:"policy_version"`
	// PolicyEnforced is false while the data path passes every packet
	// (--policy=off, or switched off: PUT /v1/policy-enforcement).
	PolicyEnforced bool `json:"policy_enforced"`
	// VersionWarning is set while the live members run different
	// versions (an upgrade under way or stuck): which runs what.
	VersionWarning string `json:"version_warning,omitempty"`
	// Ready says whether the cell holds its lease and its data plane is
	// up (as GET /readyz on the metrics listener); NotReady says why not.
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready,omitempty"`
}

// Member is one cell as the mesh sees it.
type Member struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	State  string `json:"state"`
	Subnet string `json:"subnet,omitempty"`
	Self   bool   `json:"self,omitempty"`
	// Version is the software version the member announces; "" from a
	// member older than the first weft that does.
	Version string `json:"version,omitempty"`
	// Features names what its data plane accepts (mesh.Features.Names).
	Features []string `json:"features,omitempty"`
}

// Peer is a WireGuard peer as read through wgctrl from the UAPI socket.
type Peer struct {
	PublicKey     string    `json:"public_key"`
	Endpoint      string    `json:"endpoint"`
	AllowedIPs    []string  `json:"allowed_ips"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       int64     `json:"rx_bytes"`
	TxBytes       int64     `json:"tx_bytes"`

	// PartialTCPChecksum: TCP segments to this peer leave with partial
	// checksums (it announced that it accepts them).
	PartialTCPChecksum bool `json:"partial_tcp_checksum,omitempty"`

	// PathMTU is the largest inner packet the path to this peer carries,
	// as probed (cell/pmtu.go); 0 while unknown. PathMTUState is probing,
	// ok (the overlay MTU fits), reduced (the peer's route has PathMTU)
	// or no_reply.
	PathMTU      int    `json:"path_mtu,omitempty"`
	PathMTUState string `json:"path_mtu_state,omitempty"`

	Name string `json:"name,omitempty"` // the member with this key
	// HandshakeAge is the time since LastHandshake in seconds (absent:
	// never).
	HandshakeAge float64 `json:"handshake_age_seconds,omitempty"`
}

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Error        string `json:"error"`
	CurrentStamp uint64 `json:"current_stamp,omitempty"` // with 409: the stamp to sign above
}

// StatusError is an error answer of the API.
type StatusError struct {
	Code         int
	Message      string
	CurrentStamp uint64 // with 409 Conflict: the agent's stamp of the change
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("agent answered %d", e.Code)
	}
	return e.Message
}

// AppList is the body of GET /v1/apps.
type AppList struct {
	Apps []string `json:"apps"`
}

// FlowLogState is the body of GET and PUT /v1/flow-logs.
type FlowLogState struct {
	Enabled bool `json:"enabled"`
}

// EnforcementState is the body of GET and PUT /v1/policy-enforcement.
type EnforcementState struct {
	Enabled bool `json:"enabled"`
	// Since is when enforcement last changed at run time (absent: as the
	// agent started).
	Since time.Time `json:"since,omitzero"`
}
