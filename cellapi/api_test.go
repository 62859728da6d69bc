package cellapi

import "testing"

// TestPolicyRuleValidation: the JSON form of a rule converts to a valid
// policy.Rule and back, and a bad one is refused before it is sent.
func TestPolicyRuleValidation(t *testing.T) {
	good := PolicyRule{Source: "a", Destination: "b", Protocol: "tcp", Ports: PortRange{Start: 8080, End: 8090}}
	r, err := good.Rule()
	if err != nil {
		t.Fatal(err)
	}
	if back := FromRule(r); back != good {
		t.Fatalf("round trip: %+v != %+v", back, good)
	}
	for _, p := range []PolicyRule{
		{Source: "a", Destination: "b", Protocol: "sctp", Ports: PortRange{Start: 1, End: 1}},
		{Source: "a", Destination: "b", Protocol: "tcp", Ports: PortRange{Start: 0, End: 1}},
		{Source: "a", Destination: "b", Protocol: "tcp", Ports: PortRange{Start: 9, End: 8}},
		{Source: "", Destination: "b", Protocol: "tcp", Ports: PortRange{Start: 1, End: 1}},
	} {
		if _, err := p.Rule(); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
}
