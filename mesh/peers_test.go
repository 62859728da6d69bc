package mesh

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRestartJoinsKnownPeers: with its seed down, a restarted cell joins
// the live cells it knew through peers.json, not only its --join list.
func TestRestartJoinsKnownPeers(t *testing.T) {
	seed := startNode(t, "cell-0", nodeOpts{})
	b := startNode(t, "cell-1", nodeOpts{join: seed.joinAddr()})
	dir := t.TempDir()
	c := startNode(t, "cell-2", nodeOpts{join: seed.joinAddr(), dir: dir})
	waitMembers(t, []*Mesh{seed, b, c}, 3)
	path := filepath.Join(dir, peersFileName)
	eventually(t, 5*time.Second, "peers.json lists both peers", func() error {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if fi.Mode().Perm() != 0o600 {
			return fmt.Errorf("%s mode %v", path, fi.Mode().Perm())
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.peersSaved != b.LocalAddr().String()+","+seed.LocalAddr().String() &&
			c.peersSaved != seed.LocalAddr().String()+","+b.LocalAddr().String() {
			return fmt.Errorf("peers saved: %q", c.peersSaved)
		}
		return nil
	})
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	seed.kill()
	start := time.Now()
	c2 := startNode(t, "cell-2", nodeOpts{join: seed.joinAddr(), dir: dir})
	eventually(t, 5*time.Second, "restarted cell sees the live cell", func() error {
		for _, n := range c2.Members() {
			if n.Name == "cell-1" && n.State == NodeAlive {
				return nil
			}
		}
		return fmt.Errorf("members: %v", c2.Members())
	})
	t.Logf("restarted cell saw the live cell after %v", time.Since(start).Round(time.Millisecond))
}
