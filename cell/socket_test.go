package cell

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestListenSocketRemovesOnlyStaleSockets: --socket PATH never deletes what
// is not a stale socket.
func TestListenSocketRemovesOnlyStaleSockets(t *testing.T) {
	dir := t.TempDir()

	file := filepath.Join(dir, "operators.pub")
	if err := os.WriteFile(file, []byte("keep me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "subdir")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, what string }{
		{file, "a regular file (8 bytes)"},
		{sub, "a directory"},
		{link, "a symlink"},
	} {
		ln, err := listenSocket(c.path)
		if err == nil {
			ln.Close()
			t.Fatalf("listenSocket(%s) replaced %s", c.path, c.what)
		}
		if !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.what) {
			t.Errorf("listenSocket(%s): error %q does not name the path and %q", c.path, err, c.what)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me\n" {
		t.Fatalf("%s after the refusals: %q, %v", file, b, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Fatalf("symlink %s after the refusal: %v, %v", link, fi, err)
	}
	if fi, err := os.Stat(sub); err != nil || !fi.IsDir() {
		t.Fatalf("dir %s after the refusal: %v", sub, err)
	}

	// A live socket is refused and keeps working.
	live := filepath.Join(dir, "live.sock")
	other, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if ln, err := listenSocket(live); err == nil {
		ln.Close()
		t.Fatal("listenSocket took over a socket another process serves")
	} else if !strings.Contains(err.Error(), "already served") {
		t.Fatalf("live socket: %v", err)
	}
	if c, err := net.Dial("unix", live); err != nil {
		t.Fatalf("the live socket was removed: %v", err)
	} else {
		c.Close()
	}

	// A stale socket (its listener gone, the file left) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	old, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(stale); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	ln, err := listenSocket(stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer ln.Close()
	if fi, err := os.Stat(stale); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new socket: %v, %v", fi, err)
	}

	// Nothing there: a new socket.
	fresh := filepath.Join(dir, "new", "weft.sock")
	ln2, err := listenSocket(fresh)
	if err != nil {
		t.Fatal(err)
	}
	ln2.Close()
}
