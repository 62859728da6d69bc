package lab

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Status is the part of `weft status --output json` the lab and tests
// use. Decoding is tolerant: unknown fields are ignored, and field names
// match whatever their case or separators ("public_key", "publicKey").
// Raw keeps the whole document for anything else.
type Status struct {
	Name    string
	Subnet  string // "" until the cell has leased one
	Members []Member
	Peers   []Peer
	Raw     json.RawMessage
}

// Member is one gossip member as the cell sees it.
type Member struct {
	Name   string
	State  string // e.g. "alive", "suspect", "dead", "left"
	Addr   string
	Subnet string
}

// Peer is one WireGuard peer of the cell.
type Peer struct {
	Name       string
	PublicKey  string
	Endpoint   string
	AllowedIPs []string
	Raw        json.RawMessage
}

// ParseStatus decodes the JSON printed by `weft status --output json`.
func ParseStatus(data []byte) (Status, error) {
	st := Status{Raw: append(json.RawMessage(nil), data...)}
	f, err := looseObject(data)
	if err != nil {
		return Status{}, fmt.Errorf("parse status %q: %w", abbrev(data), err)
	}
	f.str("name", &st.Name)
	f.str("subnet", &st.Subnet)
	for _, raw := range f.list("members") {
		var m Member
		if json.Unmarshal(raw, &m.Name) != nil { // a bare name is fine too
			o, err := looseObject(raw)
			if err != nil {
				return Status{}, fmt.Errorf("parse status member %s: %w", raw, err)
			}
			o.str("name", &m.Name)
			o.str("state", &m.State)
			o.str("status", &m.State)
			o.str("addr", &m.Addr)
			o.str("address", &m.Addr)
			o.str("subnet", &m.Subnet)
		}
		st.Members = append(st.Members, m)
	}
	for _, raw := range f.list("peers") {
		o, err := looseObject(raw)
		if err != nil {
			return Status{}, fmt.Errorf("parse status peer %s: %w", raw, err)
		}
		p := Peer{Raw: raw}
		o.str("name", &p.Name)
		o.str("publickey", &p.PublicKey)
		o.str("endpoint", &p.Endpoint)
		if v, ok := o["allowedips"]; ok {
			json.Unmarshal(v, &p.AllowedIPs)
		}
		st.Peers = append(st.Peers, p)
	}
	return st, nil
}

// MemberState returns the state of the member named name, "" if absent.
func (s Status) MemberState(name string) string {
	for _, m := range s.Members {
		if m.Name == name {
			return m.State
		}
	}
	return ""
}

// looseFields maps normalised JSON keys (lower case, no '_' or '-') to
// their raw values.
type looseFields map[string]json.RawMessage

func looseObject(data []byte) (looseFields, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	f := make(looseFields, len(m))
	for k, v := range m {
		k = strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(k))
		f[k] = v
	}
	return f, nil
}

// str sets *dst from a string (or number) field; absent or null leaves it.
func (f looseFields) str(key string, dst *string) {
	v, ok := f[key]
	if !ok {
		return
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		if s != "" {
			*dst = s
		}
		return
	}
	if t := strings.TrimSpace(string(v)); t != "null" && !strings.HasPrefix(t, "{") && !strings.HasPrefix(t, "[") {
		*dst = t
	}
}

// list returns the elements of an array field, nil if absent or not one.
func (f looseFields) list(key string) []json.RawMessage {
	var l []json.RawMessage
	if v, ok := f[key]; ok {
		json.Unmarshal(v, &l)
	}
	return l
}

func abbrev(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
