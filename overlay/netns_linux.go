package overlay

import (
	"fmt"
	"os/exec"
	"runtime"

	"github.com/vishvananda/netns"
)

// StartInNetns starts cmd inside the named network namespace. Only the child
// enters it: the calling thread is locked, moved, used to fork, and moved
// back.
func StartInNetns(name string, cmd *exec.Cmd) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", name, err)
	}
	startErr := cmd.Start()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it.
		return fmt.Errorf("restore network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return startErr
}
