package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

const goodYAML = `# two rules, one duplicate
policies:
- source: appA
  destination: appB
  protocol: tcp
  ports: "8080"
- source: appA
  destination: appB
  protocol: tcp
  ports: 8080
- {source: appC, destination: appB, protocol: UDP, ports: "53-54"}
- source: appA
  destination: appB
  protocol: icmp
- source: appD
  destination: appB
  protocol: all
`

const goodJSON = `{"total_policies": 4, "policies": [
 {"source":{"id":"appA"},"destination":{"id":"appB","protocol":"tcp","ports":{"start":8080,"end":8080}}},
 {"source":{"id":"appC"},"destination":{"id":"appB","protocol":"udp","ports":{"start":53,"end":54}}},
 {"source":{"id":"appA"},"destination":{"id":"appB","protocol":"icmp"}},
 {"source":{"id":"appD"},"destination":{"id":"appB","protocol":"all","ports":{"start":1,"end":65535}}},
 {"source":{"id":"appA"},"destination":{"id":"appB","protocol":"tcp","ports":{"start":8080,"end":8080}}}
]}`

var goodRules = []Rule{
	{Source: "appA", Destination: "appB", Protocol: ProtoICMP},
	{Source: "appA", Destination: "appB", Protocol: ProtoTCP, Ports: PortRange{8080, 8080}},
	{Source: "appC", Destination: "appB", Protocol: ProtoUDP, Ports: PortRange{53, 54}},
	{Source: "appD", Destination: "appB", Protocol: ProtoAll, Ports: PortRange{1, 65535}},
}

func TestParseFiles(t *testing.T) {
	for _, tt := range []struct{ name, data string }{
		{"p.yaml", goodYAML}, {"p.json", goodJSON}, {"p", goodYAML}, {"p", goodJSON},
	} {
		got, err := ParseFile(tt.name, []byte(tt.data))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !slices.Equal(got, goodRules) {
			t.Errorf("%s: got %v\nwant %v", tt.name, got, goodRules)
		}
	}
	for _, empty := range []string{"policies: []\n", "---\npolicies: []\n...\n", "policies: [] # nothing\n"} {
		if got, err := ParseYAML("e.yaml", []byte(empty)); err != nil || got == nil || len(got) != 0 {
			t.Errorf("%q: %v, %v", empty, got, err)
		}
	}
	if got, err := ParseCFJSON("e.json", []byte(`{"policies":[]}`)); err != nil || len(got) != 0 {
		t.Errorf("empty json: %v, %v", got, err)
	}
}

func TestParseFileErrors(t *testing.T) {
	for _, tt := range []struct{ name, data, want string }{
		{"p.yaml", "policies:\n- source: a\n  destination: b\n  protocol: tcp\n  ports: \"8080\"\n- source: a\n  destination: b\n  protocol: tcp\n  ports: \"9000-80\"\n",
			`p.yaml:9: policies[1].ports: invalid ports "9000-80": start 9000 is greater than end 80`},
		{"p.yaml", "policies:\n- source: a\n  destination: b\n  protocol: sctp\n  ports: \"1\"\n",
			`p.yaml:4: policies[0].protocol: invalid protocol "sctp": must be tcp, udp, icmp or all`},
		{"p.yaml", "policies:\n- source: a\n  destination: b\n  protocol: tcp\n",
			`p.yaml:2: policies[0].ports: missing: tcp rules need ports, e.g. "8080" or "8080-8090"`},
		{"p.yaml", "policies:\n- source: a\n  destination: b\n  protocol: icmp\n  ports: \"1\"\n",
			`p.yaml:5: policies[0].ports: icmp rules take no ports`},
		{"p.yaml", "policies:\n- source: a\n  destination: b\n  protocol: tcp\n  port: \"1\"\n",
			`p.yaml:5: policies[0]: unknown field "port"`},
		{"p.yaml", "policies:\n- source: a b\n  destination: b\n  protocol: tcp\n  ports: \"1\"\n",
			`p.yaml:2: policies[0].source: invalid source app "a b": must be 1-128 characters from A-Z a-z 0-9 . _ - (or ORG/SPACE/APP)`},
		{"p.yaml", "policies:\n- destination: b\n  protocol: tcp\n  ports: \"1\"\n", `p.yaml:2: policies[0]: missing field "source"`},
		{"p.yaml", "rules: []\n", `p.yaml:1: unknown field "rules": only "policies", "egress" and "ingress" are allowed`},
		// Only "policies: []" means no policies (issue 22, item 5).
		{"p.yaml", "", `p.yaml: empty file: write "policies: []" to mean no policies`},
		{"p.yaml", "# nothing\n\n", `p.yaml: empty file: write "policies: []" to mean no policies`},
		{"p.yaml", "policies:\n", `p.yaml:1: policies: null: write "policies: []" to mean no policies`},
		{"p.yaml", "policies: ~\n", `p.yaml:1: policies: null: write "policies: []" to mean no policies`},
		{"p.yaml", "policies: null\n", `p.yaml:1: policies: null: write "policies: []" to mean no policies`},
		{"p.yaml", "~\n", `p.yaml:1: no policies given (the document is null): write "policies: []" to mean no policies`},
		{"p.yaml", "---\n", `p.yaml:2: no policies given (the document is null): write "policies: []" to mean no policies`},
		{"p.yaml", "{}\n", `p.yaml:1: missing field "policies": write "policies: []" to mean no policies`},
		{"p.yaml", "policies: {}\n", `p.yaml:1: policies: want a list`},
		// One document: a second one is an error, broken or not.
		{"p.yaml", "policies: []\n---\npolicies: []\n", `p.yaml:2: a second YAML document: a policy file holds one`},
		{"p.yaml", "policies: []\n---\n", `p.yaml:2: a second YAML document: a policy file holds one`},
		{"p.yaml", "policies: []\n---\nfoo: [\n", `p.yaml:3: a second YAML document: did not find expected node content`},
		// Long input is cut in errors.
		{"p.yaml", "policies:\n- source: a\n  destination: b\n  protocol: " + strings.Repeat("x", 10240) + "\n",
			`p.yaml:4: policies[0].protocol: invalid protocol "` + strings.Repeat("x", 100) + `"… (10240 bytes): must be tcp, udp, icmp or all`},
		{"p.yaml", "policies:\n- source: " + strings.Repeat("x", 10240) + "\n  destination: b\n  protocol: tcp\n  ports: \"1\"\n",
			`p.yaml:2: policies[0].source: invalid source app "` + strings.Repeat("x", 100) + `"… (10240 bytes): must be 1-128 characters from A-Z a-z 0-9 . _ - (or ORG/SPACE/APP)`},
		{"p.yaml", "policies:\n- {source: a, destination: b, protocol: tcp, ports: \"" + strings.Repeat("9", 5000) + "\"}\n",
			`p.yaml:2: policies[0].ports: invalid ports "` + strings.Repeat("9", 100) + `"… (5000 bytes): port ` + strings.Repeat("9", 100) + `… (5000 bytes) is out of range 1-65535`},
		{"p.yaml", "policies: [\n", `p.yaml:1: did not find expected node content`},
		{"p.json", `{"policies":[` + "\n" + `{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{"start":9000,"end":80}}}]}`,
			`p.json:2: policies[0].destination.ports: invalid ports 9000-80: start 9000 is greater than end 80`},
		{"p.json", `{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":1}}},` + "\n" +
			`{"source":{"id":"a","x":1},"destination":{"id":"b","protocol":"tcp"}}]}`,
			`p.json: policies[1]: unknown field "x"`},
		{"p.json", `{"policies":[{"source":{"id":"a"},"destination":{"id":"b"}}]}`, `p.json:1: policies[0].destination.protocol: missing`},
		{"p.json", `{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{"start":"80","end":80}}}]}`,
			`p.json:1: byte offset 96: policies[0]: destination.ports.start: want int, not string`},
		{"p.json", "{\"policies\":[\n{\"source\":}]}", `p.json:2: byte offset 25: invalid character '}' looking for beginning of value`},
		{"p.json", `{"policies":[]`, `p.json:1: byte offset 14: unexpected end of file`},
		{"p.json", `{"rules":[]}`, `p.json: unknown field "rules"`},
		{"p.json", `{}`, `p.json: missing field "policies": write {"policies": []} to mean no policies`},
		{"p.json", `{"policies": null}`, `p.json: policies: null: write {"policies": []} to mean no policies`},
		{"p.json", `null`, `p.json: no policies given (the document is null): write {"policies": []} to mean no policies`},
		{"p.json", " \n", `p.json: empty file: write {"policies": []} to mean no policies`},
		{"p.json", `{"policies": {}}`, `p.json: policies: want a list`},
		// A key given twice is an error, not "the last one wins".
		{"p.json", `{"policies":[],` + "\n" + `"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":1}}}]}`,
			`p.json:2: byte offset 16: key "policies" given twice`},
		{"p.json", `{"policies":[{"source":{"id":"a"},"destination":{"id":"b","ID":"c","protocol":"tcp","ports":{"start":1,"end":1}}}]}`,
			`p.json:1: byte offset 58: policies[0].destination: key "ID" given twice`},
		{"p.json", `{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":2,"end":1}}}]}`,
			`p.json:1: byte offset 102: policies[0].destination.ports: key "end" given twice`},
		{"p.json", `{"policies":[],"` + strings.Repeat("k", 10240) + `":1}`,
			`p.json: unknown field "` + strings.Repeat("k", 100) + `"… (10240 bytes)`},
	} {
		_, err := ParseFile(tt.name, []byte(tt.data))
		if errText(err) != tt.want {
			t.Errorf("%q:\n got %s\nwant %s", tt.data, errText(err), tt.want)
		}
	}
}

// randomRules returns a random valid rule set with duplicates.
func randomRules(rng *rand.Rand, n int) []Rule {
	var rs []Rule
	for range n {
		r := Rule{Source: fmt.Sprintf("app%d", rng.IntN(5)), Destination: fmt.Sprintf("app-%d.x", rng.IntN(5)),
			Protocol: [...]Protocol{ProtoTCP, ProtoUDP, ProtoICMP, ProtoAll}[rng.IntN(4)]}
		if r.Protocol != ProtoICMP {
			a, b := uint16(1+rng.IntN(65535)), uint16(1+rng.IntN(65535))
			r.Ports = PortRange{min(a, b), max(a, b)}
		}
		rs = append(rs, r)
		if rng.IntN(5) == 0 {
			rs = append(rs, r)
		}
	}
	return rs
}

func TestFileRoundTrip(t *testing.T) {
	odd := []Rule{{Source: "true", Destination: "null", Protocol: ProtoTCP, Ports: PortRange{1, 1}},
		{Source: "0x10", Destination: "-", Protocol: ProtoUDP, Ports: PortRange{65535, 65535}},
		{Source: "1.5", Destination: "_", Protocol: ProtoICMP}}
	for seed := range uint64(30) {
		rules := randomRules(rand.New(rand.NewPCG(seed, 1)), int(seed)*3)
		if seed == 0 {
			rules = odd
		}
		want := normalize(slices.Clone(rules))
		for _, f := range []struct {
			name    string
			marshal func([]Rule) ([]byte, error)
		}{{"r.yaml", MarshalYAML}, {"r.json", MarshalCFJSON}} {
			b, err := f.marshal(rules)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseFile(f.name, b)
			if err != nil {
				t.Fatalf("%s: %v\n%s", f.name, err, b)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s: round trip\n got %v\nwant %v\n%s", f.name, got, want, b)
			}
		}
	}
	if _, err := MarshalYAML([]Rule{{Source: "a"}}); err == nil {
		t.Error("MarshalYAML of an invalid rule")
	}
}

func TestDiffRules(t *testing.T) {
	r := func(src string, port uint16) Rule {
		return Rule{Source: src, Destination: "b", Protocol: ProtoTCP, Ports: PortRange{port, port}}
	}
	d := DiffRules([]Rule{r("a", 2), r("a", 1), r("c", 1), r("a", 1)}, []Rule{r("d", 1), r("a", 1), r("b", 1)})
	if !slices.Equal(d.Remove, []Rule{r("a", 2), r("c", 1)}) || !slices.Equal(d.Add, []Rule{r("b", 1), r("d", 1)}) {
		t.Errorf("diff = %+v", d)
	}
	if d := DiffRules(goodRules, goodRules); d.Add != nil || d.Remove != nil {
		t.Errorf("diff of equal sets = %+v", d)
	}
}

// fuzzRoundTrip is the property of both file fuzzers: whatever parses
// without error is valid, sorted and deduplicated, and survives a round
// trip through both formats.
func fuzzRoundTrip(t *testing.T, rules []Rule) {
	for i, r := range rules {
		if err := r.Validate(); err != nil {
			t.Fatalf("parsed an invalid rule %v: %v", r, err)
		}
		if i > 0 && CompareRules(rules[i-1], r) >= 0 {
			t.Fatalf("not sorted and deduplicated: %v", rules)
		}
	}
	for _, f := range []struct {
		name    string
		marshal func([]Rule) ([]byte, error)
	}{{"r.yaml", MarshalYAML}, {"r.json", MarshalCFJSON}} {
		b, err := f.marshal(rules)
		if err != nil {
			t.Fatalf("marshal %v: %v", rules, err)
		}
		got, err := ParseFile(f.name, b)
		if err != nil {
			t.Fatalf("%s of %v: %v\n%s", f.name, rules, err, b)
		}
		if !slices.Equal(got, rules) {
			t.Fatalf("%s round trip: got %v, want %v", f.name, got, rules)
		}
	}
}

func FuzzParseYAML(f *testing.F) {
	f.Add([]byte(goodYAML))
	f.Add([]byte("policies: []\n"))
	f.Add([]byte("policies:\n- {source: a, destination: b, protocol: all}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rules, err := ParseYAML("f.yaml", b)
		if err != nil {
			return
		}
		fuzzRoundTrip(t, rules)
	})
}

func FuzzParseCFJSON(f *testing.F) {
	f.Add([]byte(goodJSON))
	f.Add([]byte(`{"policies":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rules, err := ParseCFJSON("f.json", b)
		if err != nil {
			return
		}
		fuzzRoundTrip(t, rules)
	})
}
