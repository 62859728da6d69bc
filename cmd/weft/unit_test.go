package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const unitFile = "../../deploy/weft-agent.service"

// TestUnitSecurity: systemd-analyze rates the shipped unit's sandbox below
// 5 ("OK"; the unit before issue 25 scored 9.6 "UNSAFE"), and the unit
// waits for the agent's readiness (Type=notify).
func TestUnitSecurity(t *testing.T) {
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nType=notify\n", "\nNoNewPrivileges=yes\n", "\nCapabilityBoundingSet="} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("%s lacks %q", unitFile, strings.TrimSpace(want))
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is not installed (apt-get install systemd); with CI=true this test must run")
		}
		t.Skip("systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd): the unit's security score is not checked")
	}
	// --offline needs the unit under its own name.
	path := filepath.Join(t.TempDir(), "weft-agent.service")
	if err := os.WriteFile(path, unit, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "security", "--offline=yes", "--no-pager", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for weft-agent\.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security: exposure %.1f", score)
	if score >= 5 {
		t.Fatalf("exposure %.1f, want below 5:\n%s", score, out)
	}
}

// TestUnitDocumentationInstalled: every file the unit's Documentation=
// names is placed by the install steps in docs/operations.md.
func TestUnitDocumentationInstalled(t *testing.T) {
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	docs := regexp.MustCompile(`(?m)^Documentation=(.*)$`).FindAllSubmatch(unit, -1)
	if len(docs) == 0 {
		t.Fatal("the unit has no Documentation=")
	}
	for _, d := range docs {
		for _, uri := range strings.Fields(string(d[1])) {
			path, ok := strings.CutPrefix(uri, "file://")
			if !ok {
				continue
			}
			if !regexp.MustCompile(`(?m)^\s*install .*\s` + regexp.QuoteMeta(path) + `\s*$`).Match(ops) {
				t.Errorf("Documentation=%s: no install step in docs/operations.md places %s", uri, path)
			}
		}
	}
}
