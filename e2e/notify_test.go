package e2e

import (
	"encoding/json"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// TestSystemdNotify: an agent started as systemd starts a Type=notify
// service ($NOTIFY_SOCKET) sends READY=1 once it holds its lease and its
// data plane is up, and STOPPING=1 on SIGTERM (issue 25 item 4).
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", sock) // the lab's agents inherit it; a path socket crosses network namespaces
	l := lab.Setup(t, lab.Config{Cells: 1, WeftBin: weftBin})
	read := func() string {
		t.Helper()
		ln.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 512)
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("no notification from the agent: %v", err)
		}
		return string(buf[:n])
	}
	ready := read()
	st, err := l.Status(1)
	if err != nil {
		t.Fatal(err)
	}
	if want := "READY=1\nSTATUS=serving subnet " + st.Subnet; ready != want {
		t.Fatalf("first notification %q, want %q", ready, want)
	}
	var rs struct {
		Ready bool `json:"ready"`
	}
	if err := json.Unmarshal(st.Raw, &rs); err != nil || !rs.Ready {
		t.Errorf("READY=1 sent, but status says (%v): %s", err, st.Raw)
	}
	if err := l.StopCell(1); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "STOPPING=1" {
		t.Fatalf("notification at SIGTERM %q, want STOPPING=1", got)
	}
}
