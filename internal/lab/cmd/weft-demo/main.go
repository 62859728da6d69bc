// Command weft-demo tells the c2c story on this machine: two cells in network
// namespaces, appB serving HTTP on cell 2, appA on cell 1 refused, allowed by
// a policy, refused again when the policy is removed. It prints every command
// and its result, and removes everything it made.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

func main() {
	weftBin := flag.String("weft", "bin/weft", "weft binary")
	appBin := flag.String("app", "bin/weft-httpapp", "HTTP app binary run as appB")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "weft-demo: needs root (network namespaces, TUN devices); try: sudo make demo")
		os.Exit(1)
	}
	if err := run(*weftBin, *appBin); err != nil {
		fmt.Fprintln(os.Stderr, "weft-demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", args...) }

func run(weftBin, appBin string) error {
	step("Starting two cells (network namespaces on an underlay bridge, 198.18.0.0/24)")
	l, err := lab.New(lab.Config{Cells: 2, WeftBin: weftBin, Logf: func(f string, a ...any) {
		fmt.Printf("    "+f+"\n", a...)
	}})
	if err != nil {
		return err
	}
	defer func() {
		step("Tearing down")
		l.Close()
		fmt.Println("    done")
	}()
	for _, c := range l.Cells {
		st, err := l.Status(c.Index)
		if err != nil {
			return err
		}
		fmt.Printf("    cell %d: %s, subnet %s, agent pid %d\n", c.Index, c.Netns, st.Subnet, c.PID())
	}

	appB, appA := l.Name("appB"), l.Name("appA")
	ipB, stopB, err := startApp(l, weftBin, appBin, 2, "appB", appB)
	if err != nil {
		return err
	}
	defer stopB()
	ipA, stopA, err := startApp(l, weftBin, appBin, 1, "appA", appA)
	if err != nil {
		return err
	}
	defer stopA()

	if err := waitHandshakes(l); err != nil {
		return err
	}

	target := fmt.Sprintf("http://%s:8080/", ipB)
	step("appA: curl %s   (no policy yet)", target)
	curl(appA, target)

	step("weft add-network-policy appA appB --protocol tcp --port 8080")
	out, err := l.Weft(1, "add-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	fmt.Print(indent(out))
	if err != nil {
		return err
	}
	start := time.Now()
	for time.Since(start) < 10*time.Second {
		if code, _, err := lab.HTTPGetIn(appA, target, time.Second); err == nil && code == 200 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Printf("    (appA reached appB %v after the policy was added)\n", time.Since(start).Round(time.Millisecond))

	step("appA: curl %s   (policy in place)", target)
	curl(appA, target)

	back := fmt.Sprintf("http://%s:8080/", ipA)
	step("appB: curl %s   (the other direction: no policy)", back)
	curl(appB, back)

	step("weft network-policies")
	out, _ = l.Weft(2, "network-policies")
	fmt.Print(indent(out))

	step("weft remove-network-policy appA appB --protocol tcp --port 8080")
	out, err = l.Weft(2, "remove-network-policy", "appA", "appB", "--protocol", "tcp", "--port", "8080")
	fmt.Print(indent(out))
	if err != nil {
		return err
	}
	time.Sleep(time.Second) // let the removal reach cell 2 by gossip
	step("appA: curl %s   (policy removed)", target)
	curl(appA, target)

	step("weft status (cell 1)")
	out, _ = l.Weft(1, "status")
	fmt.Print(indent(out))
	return nil
}

// startApp runs the HTTP app as APP in a new container on cell with
// `weft run`, and returns its overlay IP and a function that stops it (which
// makes `weft run` delete the container).
func startApp(l *lab.Lab, weftBin, appBin string, cell int, app, name string) (netip.Addr, func(), error) {
	step("cell %d: weft run --app %s --name %s -- weft-httpapp -port 8080", cell, app, name)
	cmd := exec.Command(weftBin, "--socket", l.Cells[cell-1].Socket, "run", "--app", app, "--name", name, "--", appBin, "-port", "8080")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return netip.Addr{}, nil, err
	}
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	ip, err := waitContainer(l, cell, name)
	if err != nil {
		stop()
		return netip.Addr{}, nil, fmt.Errorf("%v\n%s", err, out.String())
	}
	fmt.Printf("    %s runs at CF_INSTANCE_INTERNAL_IP=%s\n", app, ip)
	return ip, stop, nil
}

// waitHandshakes waits until every cell has a WireGuard session with each
// of its peers, so that the story shows steady-state behaviour rather than
// the first handshake of freshly started cells.
func waitHandshakes(l *lab.Lab) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ready := true
		for _, c := range l.Cells {
			st, err := l.Status(c.Index)
			if err != nil || len(st.Peers) != len(l.Cells)-1 {
				ready = false
				break
			}
			for _, p := range st.Peers {
				ready = ready && strings.Contains(string(p.Raw), `"last_handshake"`)
			}
		}
		if ready {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the cells did not complete their WireGuard handshakes within 10s")
}

// curl runs curl inside netns ns (or, without curl, a Go HTTP GET) and
// prints what it said.
func curl(ns, url string) {
	if _, err := exec.LookPath("curl"); err == nil {
		out, _ := lab.ExecIn(ns, "curl", "-sS", "-m", "3", url).CombinedOutput()
		fmt.Print(indent(string(out)))
		return
	}
	code, body, err := lab.HTTPGetIn(ns, url, 3*time.Second)
	if err != nil {
		fmt.Printf("    GET %s: %v\n", url, err)
		return
	}
	fmt.Printf("    HTTP %d\n%s", code, indent(body))
}

func waitContainer(l *lab.Lab, cell int, name string) (netip.Addr, error) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := l.Weft(cell, "container", "list")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 3 && f[0] == name {
				return netip.ParseAddr(f[2])
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return netip.Addr{}, fmt.Errorf("container %s did not appear on cell %d", name, cell)
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ") + "\n"
}
