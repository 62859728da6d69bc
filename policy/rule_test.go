package policy

import (
	"slices"
	"strings"
	"testing"
)

func TestParseProtocol(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    Protocol
		wantErr string
	}{
		{"tcp", ProtoTCP, ""},
		{"UDP", ProtoUDP, ""},
		{"Icmp", ProtoICMP, ""},
		{"sctp", 0, `invalid protocol "sctp": must be tcp, udp, icmp or all`},
		{"", 0, `invalid protocol "": must be tcp, udp, icmp or all`},
	} {
		got, err := ParseProtocol(tt.in)
		if errText(err) != tt.wantErr || got != tt.want {
			t.Errorf("ParseProtocol(%q) = %v, %q; want %v, %q", tt.in, got, errText(err), tt.want, tt.wantErr)
		}
		if err == nil && got.String() != strings.ToLower(tt.in) {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
}

func TestParsePorts(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    PortRange
		wantErr string
	}{
		{"8080", PortRange{8080, 8080}, ""},
		{"8080-8090", PortRange{8080, 8090}, ""},
		{"1-65535", PortRange{1, 65535}, ""},
		{"80-80", PortRange{80, 80}, ""},
		{"http", PortRange{}, `invalid ports "http": "http" is not a number`},
		{"", PortRange{}, `invalid ports "": want a port 1-65535 or a range N-M`},
		{"80-", PortRange{}, `invalid ports "80-": the range lacks its end port (N-M)`},
		{"-80", PortRange{}, `invalid ports "-80": want a port 1-65535 or a range N-M, not a negative number`},
		{"-1", PortRange{}, `invalid ports "-1": want a port 1-65535 or a range N-M, not a negative number`},
		{"80--1", PortRange{}, `invalid ports "80--1": "-1" is not a number`},
		{"9000-8000" + strings.Repeat("0", 200), PortRange{}, `invalid ports "9000-8000` + strings.Repeat("0", 91) + `"… (209 bytes): port 8000` +
			strings.Repeat("0", 96) + `… (204 bytes) is out of range 1-65535`},
		{"+80", PortRange{}, `invalid ports "+80": "+80" is not a number`},
		{"0", PortRange{}, `invalid ports "0": port 0 is out of range 1-65535`},
		{"65536", PortRange{}, `invalid ports "65536": port 65536 is out of range 1-65535`},
		{"99999999999999999999", PortRange{}, `invalid ports "99999999999999999999": port 99999999999999999999 is out of range 1-65535`},
		{"80-70000", PortRange{}, `invalid ports "80-70000": port 70000 is out of range 1-65535`},
		{"9000-8000", PortRange{}, `invalid ports "9000-8000": start 9000 is greater than end 8000`},
	} {
		got, err := ParsePorts(tt.in)
		if errText(err) != tt.wantErr || got != tt.want {
			t.Errorf("ParsePorts(%q) = %v, %q; want %v, %q", tt.in, got, errText(err), tt.want, tt.wantErr)
		}
		if err == nil {
			if s := got.String(); s != tt.in && !(got.Start == got.End && s+"-"+s == tt.in) {
				t.Errorf("%v.String() = %q, want %q", got, s, tt.in)
			}
		}
	}
}

// TestQuoteCutsLongInput: errors repeat at most ~100 bytes of what the
// user gave, cut on a rune boundary, with the total length.
func TestQuoteCutsLongInput(t *testing.T) {
	if got := Quote("appA"); got != `"appA"` {
		t.Errorf("Quote(appA) = %s", got)
	}
	long := strings.Repeat("é", 5000) // 10 kB, 2 bytes a rune
	got := Quote(long)
	if want := `"` + strings.Repeat("é", 50) + `"… (10000 bytes)`; got != want {
		t.Errorf("Quote(10 kB) = %s, want %s", got, want)
	}
	big := strings.Repeat("a", 50<<20)
	for name, err := range map[string]error{
		"source":   Rule{Source: big, Destination: "b", Protocol: ProtoTCP, Ports: PortRange{1, 1}}.Validate(),
		"protocol": func() error { _, err := ParseProtocol(big); return err }(),
		"ports":    func() error { _, err := ParsePorts(big); return err }(),
	} {
		if err == nil || len(err.Error()) > 300 || !strings.Contains(err.Error(), "(52428800 bytes)") {
			t.Errorf("%s: a 50 MB value gave a %d-byte error: %.300v", name, len(errText(err)), err)
		}
	}
}

func TestPortRangeContains(t *testing.T) {
	r := PortRange{10, 20}
	for p, want := range map[uint16]bool{9: false, 10: true, 15: true, 20: true, 21: false} {
		if r.Contains(p) != want {
			t.Errorf("%v.Contains(%d) = %v", r, p, !want)
		}
	}
}

func TestRuleValidate(t *testing.T) {
	ok := Rule{Source: "appA", Destination: "app-B_1.x", Protocol: ProtoTCP, Ports: PortRange{8080, 8090}}
	for _, tt := range []struct {
		name    string
		edit    func(*Rule)
		wantErr string
	}{
		{"valid", func(*Rule) {}, ""},
		{"icmp", func(r *Rule) { r.Protocol, r.Ports = ProtoICMP, PortRange{} }, ""},
		{"128-char name", func(r *Rule) { r.Source = strings.Repeat("a", 128) }, ""},
		{"empty source", func(r *Rule) { r.Source = "" },
			`invalid source app "": must be 1-128 characters from A-Z a-z 0-9 . _ - (or ORG/SPACE/APP)`},
		{"long source", func(r *Rule) { r.Source = strings.Repeat("a", 129) },
			`invalid source app "` + strings.Repeat("a", 100) + `"… (129 bytes): must be 1-128 characters from A-Z a-z 0-9 . _ - (or ORG/SPACE/APP)`},
		{"bad destination", func(r *Rule) { r.Destination = "app b" },
			`invalid destination app "app b": must be 1-128 characters from A-Z a-z 0-9 . _ - (or ORG/SPACE/APP)`},
		{"unknown protocol", func(r *Rule) { r.Protocol = 132 }, `invalid protocol 132: must be tcp, udp, icmp or all`},
		{"tcp without ports", func(r *Rule) { r.Ports = PortRange{} },
			`invalid ports 0-0 for tcp: ports must be within 1-65535`},
		{"udp start 0", func(r *Rule) { r.Protocol, r.Ports = ProtoUDP, PortRange{0, 53} },
			`invalid ports 0-53 for udp: ports must be within 1-65535`},
		{"start > end", func(r *Rule) { r.Ports = PortRange{90, 80} },
			`invalid ports 90-80 for tcp: start 90 is greater than end 80`},
		{"icmp with ports", func(r *Rule) { r.Protocol = ProtoICMP },
			`invalid ports 8080-8090: icmp rules take no ports`},
	} {
		r := ok
		tt.edit(&r)
		if got := errText(r.Validate()); got != tt.wantErr {
			t.Errorf("%s: Validate() = %q, want %q", tt.name, got, tt.wantErr)
		}
	}
}

func TestRuleKeyString(t *testing.T) {
	for _, tt := range []struct {
		r         Rule
		key, text string
	}{
		{Rule{"appA", "appB", ProtoTCP, PortRange{8080, 8090}}, "appA>appB/tcp/8080-8090", "appA -> appB tcp 8080-8090"},
		{Rule{"appA", "appB", ProtoUDP, PortRange{53, 53}}, "appA>appB/udp/53-53", "appA -> appB udp 53"},
		{Rule{"appA", "appB", ProtoICMP, PortRange{}}, "appA>appB/icmp/0-0", "appA -> appB icmp"},
	} {
		if got := tt.r.Key(); got != tt.key {
			t.Errorf("Key() = %q, want %q", got, tt.key)
		}
		if got := tt.r.String(); got != tt.text {
			t.Errorf("String() = %q, want %q", got, tt.text)
		}
	}
}

func TestSortRules(t *testing.T) {
	rs := []Rule{
		{"b", "a", ProtoTCP, PortRange{1, 1}},
		{"a", "b", ProtoUDP, PortRange{1, 1}},
		{"a", "b", ProtoTCP, PortRange{2, 3}},
		{"a", "b", ProtoTCP, PortRange{2, 2}},
		{"a", "a", ProtoICMP, PortRange{}},
	}
	SortRules(rs)
	var keys []string
	for _, r := range rs {
		keys = append(keys, r.Key())
	}
	want := []string{"a>a/icmp/0-0", "a>b/tcp/2-2", "a>b/tcp/2-3", "a>b/udp/1-1", "b>a/tcp/1-1"}
	if !slices.Equal(keys, want) {
		t.Errorf("sorted %v, want %v", keys, want)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestQualifiedApps: ORG/SPACE/APP names are valid, parts split and join
// back (the engine's TestQualifiedAppsMatch: how a table matches them).
func TestQualifiedApps(t *testing.T) {
	for name, ok := range map[string]bool{
		"app": true, "acme/prod/app": true, "a.b/c_d/e-f": true,
		"acme/app": false, "a/b/c/d": false, "/prod/app": false, "acme//app": false, "acme/prod/": false, "a/b/c d": false,
		"acme/prod/" + strings.Repeat("x", 118): true, "acme/prod/" + strings.Repeat("x", 119): false,
	} {
		if got := ValidAppName(name); got != ok {
			t.Errorf("ValidAppName(%q) = %v, want %v", name, got, ok)
		}
	}
	if o, s, a := SplitApp("acme/prod/app"); o != "acme" || s != "prod" || a != "app" || QualifyApp(o, s, a) != "acme/prod/app" {
		t.Errorf("SplitApp: %q %q %q", o, s, a)
	}
	if o, s, a := SplitApp("app"); o != "" || s != "" || a != "app" || QualifyApp("", "", "app") != "app" {
		t.Errorf("SplitApp plain: %q %q %q", o, s, a)
	}

}
