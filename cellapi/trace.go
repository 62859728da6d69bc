package cellapi

// POST /v1/trace: would a flow pass, and if not, why. The agent answers
// from the replicated state (endpoint registry, members, policy set) and
// its own data plane (compiled table, guard, WireGuard peers, interface
// MTUs), without sending a packet.
//
//	POST /v1/trace   TraceRequest -> TraceResult (400/404 for bad input)
//
// With Live, the agent sends one probe from a source container on this
// cell and reports where it went (trace_live.go); 409 when the source has
// no container on this cell.

// TraceRequest names the flow to trace: a source app (or one container of
// it), a destination app or overlay IP, a protocol and a destination port.
type TraceRequest struct {
	Source        string `json:"source,omitempty"`         // source app; may be empty with FromContainer
	FromContainer string `json:"from_container,omitempty"` // a container name (id) or overlay IP
	Destination   string `json:"destination"`              // app name or overlay IP
	Protocol      string `json:"protocol"`                 // tcp, udp or icmp
	Port          uint16 `json:"port,omitempty"`           // destination port; none for icmp
	// Live sends one real probe instead of reading the state.
	Live bool `json:"live,omitempty"`
	// SourceIP, with Live, sends the probe from this address instead of
	// the container's (tcp or udp): to see the guard drop a spoofed one.
	SourceIP string `json:"source_ip,omitempty"`
}

// TraceResult is the answer of POST /v1/trace. Verdict is "allow" or the
// reason code of the first step that denies (the engine's verdict names:
// unknown_source, spoofed, unknown_destination, no_policy, ...); Steps say
// what was checked, in the order a packet meets the checks.
type TraceResult struct {
	Cell         string          `json:"cell"` // the cell that answered
	Verdict      string          `json:"verdict"`
	Reason       string          `json:"reason"`
	Sources      []TraceEndpoint `json:"sources"`
	Destinations []TraceEndpoint `json:"destinations"`
	Steps        []TraceStep     `json:"steps"`
	// PathMTU is the smallest interface MTU known on the path (0: none
	// known from this cell).
	PathMTU int `json:"path_mtu,omitempty"`

	// Of a live trace: the probe sent (protocol, source and destination
	// address and port), and the step that dropped it (source_guard,
	// source_cell, destination_cell; "" when delivered). Its Verdict is
	// "delivered", the drop's code (a guard counter name such as spoofed,
	// an engine verdict such as no_policy, or lost), or "unknown".
	Live      bool   `json:"live,omitempty"`
	Probe     string `json:"probe,omitempty"`
	DroppedAt string `json:"dropped_at,omitempty"`
}

// TraceEndpoint is a registered container.
type TraceEndpoint struct {
	App  string `json:"app"`
	IP   string `json:"ip"`
	Name string `json:"name,omitempty"`
	Cell string `json:"cell"`
}

// TraceStep is one check. OK false with a Code denies the flow; OK false
// without a Code is a warning. Rule is the rule that allows the flow;
// Closest, when none does, the rules nearest to it.
type TraceStep struct {
	Step    string       `json:"step"` // source, anti_spoofing, destination, policy, enforcement, destination_cell, mtu; live: source, source_guard, source_cell, tunnel, destination_cell, delivery
	OK      bool         `json:"ok"`
	Code    string       `json:"code,omitempty"`
	Detail  string       `json:"detail"`
	Rule    *PolicyRule  `json:"rule,omitempty"`
	RuleID  string       `json:"rule_id,omitempty"` // policy.Rule.Key of Rule
	Closest []PolicyRule `json:"closest,omitempty"`
}
