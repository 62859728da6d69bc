package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"unicode"

	"go.yaml.in/yaml/v3"
)

// Policy files. Two formats hold a set of rules, both read and written:
//
// YAML:
//
//	policies:
//	- source: appA
//	  destination: appB
//	  protocol: tcp          # tcp, udp, icmp or all
//	  ports: "8080"          # or "8080-8090"; none for icmp; all: default "1-65535"
//
// Cloud Foundry's policy-server v1 JSON:
//
//	{"policies":[{"source":{"id":"appA"},
//	  "destination":{"id":"appB","protocol":"tcp","ports":{"start":8080,"end":8080}}}]}
//
// (a top-level "total_policies", as cf's list answer has, is accepted and
// ignored). Unknown fields and keys given twice are errors, and only an
// explicit empty list ("policies: []", {"policies": []}) is the empty set:
// an empty file, a null document or a null or missing "policies" are
// errors, as is a second YAML document. Errors cut long values (Quote). Parsed rules come back sorted with
// duplicates merged, so Parse(Marshal(rules)) == rules for any sorted,
// deduplicated valid set. Errors name the file, the line, the entry and the
// field, e.g.
//
//	policies.yaml:7: policies[2].ports: invalid ports "9000-80": start 9000 is greater than end 80

// ParseFile parses a policy file by its extension (.yaml, .yml, .json) or,
// for any other name, by its first non-blank byte ('{' is JSON).
func ParseFile(name string, data []byte) ([]Rule, error) {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml":
		return ParseYAML(name, data)
	case ".json":
		return ParseCFJSON(name, data)
	}
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return ParseCFJSON(name, data)
	}
	return ParseYAML(name, data)
}

// normalize sorts rules and merges duplicates.
func normalize(rules []Rule) []Rule {
	SortRules(rules)
	return slices.Compact(rules)
}

// emptyHint is what every error about a file without a list of policies
// says: only an explicit empty list means "no policies".
const emptyHint = `write "policies: []" to mean no policies`

// ParseYAML parses the YAML policy format. name is used in errors. The file
// holds one YAML document whose only key is "policies", a list: an empty
// file, a null document, a missing or null "policies" are errors (only
// "policies: []" is the empty set), and so is a second document.
func ParseYAML(name string, data []byte) ([]Rule, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: empty file: %s", name, emptyHint)
	} else if err != nil {
		return nil, yamlErr(name, "", err)
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		return nil, fmt.Errorf("%s:%d: a second YAML document: a policy file holds one", name, next.Line)
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlErr(name, "a second YAML document: ", err)
	}
	root := doc.Content[0]
	errAt := func(n *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", name, n.Line, fmt.Sprintf(format, args...))
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, errAt(root, "no policies given (the document is null): %s", emptyHint)
	}
	if root.Kind != yaml.MappingNode {
		return nil, errAt(root, "want a map with the key \"policies\"")
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value == "egress" || k.Value == "ingress" {
			continue // ParseEgressYAML's, ParseIngressYAML's
		}
		if k.Value != "policies" {
			return nil, errAt(k, "unknown field %s: only \"policies\", \"egress\" and \"ingress\" are allowed", Quote(k.Value))
		}
		if list != nil {
			return nil, errAt(k, "policies: given twice")
		}
		list = v
	}
	if list == nil {
		return nil, errAt(root, "missing field \"policies\": %s", emptyHint)
	}
	if list.Kind == yaml.ScalarNode && list.Tag == "!!null" {
		return nil, errAt(list, "policies: null: %s", emptyHint)
	}
	if list.Kind != yaml.SequenceNode {
		return nil, errAt(list, "policies: want a list")
	}
	rules := make([]Rule, 0, len(list.Content))
	for i, ent := range list.Content {
		path := fmt.Sprintf("policies[%d]", i)
		if ent.Kind != yaml.MappingNode {
			return nil, errAt(ent, "%s: want a map with source, destination, protocol and ports", path)
		}
		var r Rule
		var have [4]bool // source, destination, protocol, ports
		var portsNode *yaml.Node
		for j := 0; j+1 < len(ent.Content); j += 2 {
			k, v := ent.Content[j], ent.Content[j+1]
			idx := slices.Index([]string{"source", "destination", "protocol", "ports"}, k.Value)
			if idx < 0 {
				return nil, errAt(k, "%s: unknown field %s", path, Quote(k.Value))
			}
			if have[idx] {
				return nil, errAt(k, "%s.%s: given twice", path, k.Value)
			}
			have[idx] = true
			if v.Kind != yaml.ScalarNode {
				return nil, errAt(v, "%s.%s: want a string", path, k.Value)
			}
			switch idx {
			case 0:
				r.Source = v.Value
			case 1:
				r.Destination = v.Value
			case 2:
				p, err := ParseProtocol(v.Value)
				if err != nil {
					return nil, errAt(v, "%s.protocol: %v", path, err)
				}
				r.Protocol = p
			case 3:
				portsNode = v
			}
		}
		for idx, f := range []string{"source", "destination", "protocol"} {
			if !have[idx] {
				return nil, errAt(ent, "%s: missing field %q", path, f)
			}
		}
		if err := setPorts(&r, portsNode != nil, func() (PortRange, error) { return ParsePorts(portsNode.Value) }); err != nil {
			n := ent
			if portsNode != nil {
				n = portsNode
			}
			return nil, errAt(n, "%s.ports: %v", path, err)
		}
		if err := r.Validate(); err != nil {
			return nil, errAt(ent, "%s.%s: %v", path, ruleField(err), err)
		}
		rules = append(rules, r)
	}
	return normalize(rules), nil
}

// yamlErr turns a YAML decoding error into "file:line: what msg".
func yamlErr(name, what string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		_, msg, _ = strings.Cut(msg, ": ")
		return fmt.Errorf("%s:%d: %s%s", name, line, what, msg)
	}
	return fmt.Errorf("%s: %s%s", name, what, msg)
}

// setPorts fills r.Ports for r.Protocol: given says whether the file had
// ports, parse reads them.
func setPorts(r *Rule, given bool, parse func() (PortRange, error)) error {
	switch {
	case r.Protocol == ProtoICMP && given:
		pr, err := parse()
		if err != nil || pr != (PortRange{}) {
			return errors.New("icmp rules take no ports")
		}
	case r.Protocol == ProtoICMP:
	case given:
		pr, err := parse()
		if err != nil {
			return err
		}
		r.Ports = pr
	case r.Protocol == ProtoAll:
		r.Ports = PortRange{1, 65535}
	default:
		return fmt.Errorf("missing: %s rules need ports, e.g. \"8080\" or \"8080-8090\"", r.Protocol)
	}
	return nil
}

// ruleField names the field a Validate error is about.
func ruleField(err error) string {
	s := err.Error()
	for _, f := range []string{"source", "destination", "protocol", "ports"} {
		if strings.HasPrefix(s, "invalid "+f) {
			return f
		}
	}
	return "rule"
}

// yamlRule is one entry of the YAML format, for MarshalYAML.
type yamlRule struct {
	Source      string `yaml:"source"`
	Destination string `yaml:"destination"`
	Protocol    string `yaml:"protocol"`
	Ports       string `yaml:"ports,omitempty"`
}

// MarshalYAML writes rules (sorted, duplicates merged) in the YAML format.
// It fails on a rule that does not validate.
func MarshalYAML(rules []Rule) ([]byte, error) {
	rules, err := validSorted(rules)
	if err != nil {
		return nil, err
	}
	doc := struct {
		Policies []yamlRule `yaml:"policies"`
	}{Policies: make([]yamlRule, 0, len(rules))}
	for _, r := range rules {
		y := yamlRule{Source: r.Source, Destination: r.Destination, Protocol: r.Protocol.String()}
		if r.Protocol.HasPorts() {
			y.Ports = r.Ports.String()
		}
		doc.Policies = append(doc.Policies, y)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func validSorted(rules []Rule) ([]Rule, error) {
	for i, r := range rules {
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("rule %d (%s): %w", i, r, err)
		}
	}
	return normalize(slices.Clone(rules)), nil
}

// CF policy-server v1 JSON.
type cfDoc struct {
	TotalPolicies *int            `json:"total_policies,omitempty"`
	Policies      json.RawMessage `json:"policies"` // a list; missing or null is an error
}

type cfPolicy struct {
	Source      *cfSource      `json:"source"`
	Destination *cfDestination `json:"destination"`
}

type cfSource struct {
	ID *string `json:"id"`
}

type cfDestination struct {
	ID       *string  `json:"id"`
	Protocol *string  `json:"protocol"`
	Ports    *cfPorts `json:"ports,omitempty"`
}

type cfPorts struct {
	Start int `json:"start"`
	End   int `json:"end"`
}

// emptyHintJSON is emptyHint for the JSON format.
const emptyHintJSON = `write {"policies": []} to mean no policies`

// ParseCFJSON parses Cloud Foundry's policy-server v1 JSON. name is used
// in errors. An empty file, a top-level null, a missing or null "policies"
// are errors (only "policies": [] is the empty set), and so is a key given
// twice in one object (encoding/json would keep the last one; keys that
// differ only in case count as the same, as encoding/json matches them).
func ParseCFJSON(name string, data []byte) ([]Rule, error) {
	errAt := func(off int64, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", name, lineAt(data, off), fmt.Sprintf(format, args...))
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%s: empty file: %s", name, emptyHintJSON)
	}
	if err := checkJSONKeys(name, data); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc *cfDoc
	if err := dec.Decode(&doc); err != nil {
		return nil, jsonErr(name, data, "", err)
	}
	if dec.More() {
		return nil, errAt(dec.InputOffset(), "byte offset %d: data after the top-level object", dec.InputOffset())
	}
	switch {
	case doc == nil:
		return nil, fmt.Errorf("%s: no policies given (the document is null): %s", name, emptyHintJSON)
	case doc.Policies == nil:
		return nil, fmt.Errorf("%s: missing field \"policies\": %s", name, emptyHintJSON)
	case string(doc.Policies) == "null":
		return nil, fmt.Errorf("%s: policies: null: %s", name, emptyHintJSON)
	}
	var list []json.RawMessage
	if err := json.Unmarshal(doc.Policies, &list); err != nil {
		return nil, fmt.Errorf("%s: policies: want a list", name)
	}
	offs := entryOffsets(data)
	rules := make([]Rule, 0, len(list))
	for i, raw := range list {
		path := fmt.Sprintf("policies[%d]", i)
		off := int64(0)
		if i < len(offs) {
			off = offs[i]
		}
		d := json.NewDecoder(bytes.NewReader(raw))
		d.DisallowUnknownFields()
		var p cfPolicy
		if err := d.Decode(&p); err != nil {
			return nil, jsonErr(name, data, path, shiftErr(err, off))
		}
		switch {
		case p.Source == nil || p.Source.ID == nil:
			return nil, errAt(off, "%s.source.id: missing", path)
		case p.Destination == nil || p.Destination.ID == nil:
			return nil, errAt(off, "%s.destination.id: missing", path)
		case p.Destination.Protocol == nil:
			return nil, errAt(off, "%s.destination.protocol: missing", path)
		}
		r := Rule{Source: *p.Source.ID, Destination: *p.Destination.ID}
		proto, err := ParseProtocol(*p.Destination.Protocol)
		if err != nil {
			return nil, errAt(off, "%s.destination.protocol: %v", path, err)
		}
		r.Protocol = proto
		pp := p.Destination.Ports
		err = setPorts(&r, pp != nil, func() (PortRange, error) {
			if pp.Start == 0 && pp.End == 0 {
				return PortRange{}, nil
			}
			if pp.Start < 1 || pp.Start > 65535 || pp.End < 1 || pp.End > 65535 {
				return PortRange{}, fmt.Errorf("invalid ports %d-%d: ports must be within 1-65535", pp.Start, pp.End)
			}
			if pp.Start > pp.End {
				return PortRange{}, fmt.Errorf("invalid ports %d-%d: start %d is greater than end %d", pp.Start, pp.End, pp.Start, pp.End)
			}
			return PortRange{uint16(pp.Start), uint16(pp.End)}, nil
		})
		if err == nil && pp != nil && r.Protocol.HasPorts() && r.Ports == (PortRange{}) {
			err = errors.New("invalid ports 0-0: ports must be within 1-65535")
		}
		if err != nil {
			return nil, errAt(off, "%s.destination.ports: %v", path, err)
		}
		if err := r.Validate(); err != nil {
			f := ruleField(err)
			if f == "source" {
				f = "source.id"
			} else if f == "destination" {
				f = "destination.id"
			} else {
				f = "destination." + f
			}
			return nil, errAt(off, "%s.%s: %v", path, f, err)
		}
		rules = append(rules, r)
	}
	return normalize(rules), nil
}

// checkJSONKeys walks data and fails on the first object that holds a key
// twice (compared as encoding/json matches keys to fields: ignoring case).
// Syntax errors are left to the decoder.
func checkJSONKeys(name string, data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var walk func(path string, depth int) error
	walk = func(path string, depth int) error {
		t, err := dec.Token()
		if err != nil || depth > maxJSONDepth {
			return errStop
		}
		switch t {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				off := dec.InputOffset() + int64(skipSpace(data[dec.InputOffset():]))
				kt, err := dec.Token()
				if err != nil {
					return errStop
				}
				k, _ := kt.(string)
				fk := foldKey(k)
				if seen[fk] {
					return fmt.Errorf("%s:%d: byte offset %d: %skey %s given twice", name, lineAt(data, off), off, pathPrefix(path), Quote(k))
				}
				seen[fk] = true
				if err := walk(joinPath(path, k), depth+1); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		}
		if err != nil {
			return errStop
		}
		return nil
	}
	if err := walk("", 0); err != nil && err != errStop {
		return err
	}
	return nil
}

// maxJSONDepth is where checkJSONKeys stops descending; encoding/json
// refuses deeper nesting (10000) anyway.
const maxJSONDepth = 10000

// errStop ends checkJSONKeys at a syntax error, which the decoder reports.
var errStop = errors.New("stop")

func joinPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func pathPrefix(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}

// foldKey maps k to the same string for every key that encoding/json
// would match to the same field (Unicode simple case folding).
func foldKey(k string) string {
	var b strings.Builder
	for _, r := range k {
		low := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			low = min(low, f)
		}
		b.WriteRune(low)
	}
	return b.String()
}

// offsetErr is a JSON error whose offsets have been made absolute.
func shiftErr(err error, off int64) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		c := *se
		c.Offset += off
		return &c
	case errors.As(err, &te):
		c := *te
		c.Offset += off
		return &c
	}
	return err
}

// jsonErr turns a decoding error into "file:line: path: byte offset N: msg".
func jsonErr(name string, data []byte, path string, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	off := int64(-1)
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if f, ok := strings.CutPrefix(msg, "unknown field "); ok {
		msg = "unknown field " + Quote(strings.Trim(f, `"`))
	}
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
		msg = fmt.Sprintf("%s: want %s, not %s", te.Field, te.Type, te.Value)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		msg = "unexpected end of file"
		off = int64(len(data))
	}
	if path != "" {
		msg = path + ": " + msg
	}
	if off < 0 {
		return fmt.Errorf("%s: %s", name, msg)
	}
	return fmt.Errorf("%s:%d: byte offset %d: %s", name, lineAt(data, off), off, msg)
}

// lineAt returns the 1-based line of byte offset off.
func lineAt(data []byte, off int64) int {
	off = min(max(off, 0), int64(len(data)))
	return 1 + bytes.Count(data[:off], []byte("\n"))
}

// entryOffsets returns the byte offset of each element of the top-level
// "policies" array (best effort: nil if the structure is unexpected).
func entryOffsets(data []byte) []int64 {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil
		}
		if k != "policies" {
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return nil
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			return nil
		}
		var offs []int64
		for dec.More() {
			offs = append(offs, dec.InputOffset()+int64(skipSpace(data[dec.InputOffset():])))
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return offs
			}
		}
		return offs
	}
	return nil
}

func skipSpace(b []byte) int {
	n := 0
	for n < len(b) && (b[n] == ' ' || b[n] == '\t' || b[n] == '\r' || b[n] == '\n' || b[n] == ',') {
		n++
	}
	return n
}

// MarshalCFJSON writes rules (sorted, duplicates merged) as policy-server
// v1 JSON, one policy a line. It fails on a rule that does not validate.
func MarshalCFJSON(rules []Rule) ([]byte, error) {
	rules, err := validSorted(rules)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.WriteString(`{"policies":[`)
	for i, r := range rules {
		p := cfPolicy{Source: &cfSource{ID: &r.Source},
			Destination: &cfDestination{ID: &r.Destination, Protocol: new(r.Protocol.String())}}
		if r.Protocol.HasPorts() {
			p.Destination.Ports = &cfPorts{Start: int(r.Ports.Start), End: int(r.Ports.End)}
		}
		b, err := json.Marshal(p)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString("\n  ")
		buf.Write(b)
	}
	if len(rules) > 0 {
		buf.WriteByte('\n')
	}
	buf.WriteString("]}\n")
	return buf.Bytes(), nil
}

// Diff is what turns one rule set into another.
type Diff struct{ Add, Remove []Rule }

// DiffRules returns the rules to add to and remove from have to make it
// want, each sorted; duplicates count once and invalid rules are compared
// like any other.
func DiffRules(have, want []Rule) Diff {
	h, w := normalize(slices.Clone(have)), normalize(slices.Clone(want))
	var d Diff
	i, j := 0, 0
	for i < len(h) || j < len(w) {
		switch {
		case j == len(w) || i < len(h) && CompareRules(h[i], w[j]) < 0:
			d.Remove = append(d.Remove, h[i])
			i++
		case i == len(h) || CompareRules(h[i], w[j]) > 0:
			d.Add = append(d.Add, w[j])
			j++
		default:
			i++
			j++
		}
	}
	return d
}
