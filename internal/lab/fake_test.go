package lab

// A fake weft binary for testing the lab without the real one: the test
// binary re-executes itself with LAB_FAKE_WEFT=1 and then speaks just
// enough of the weft CLI contract (init, agent, status, container).
// The fake agent binds --bind (so it must run in its cell's namespace),
// dials every --join over the underlay, serves a line protocol on
// --socket, and holds a UAPI-like socket /var/run/wireguard/IFACE.sock.

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const fakeEnv = "LAB_FAKE_WEFT"

func TestMain(m *testing.M) {
	switch os.Getenv(fakeEnv) {
	case "1":
		os.Exit(fakeWeft(os.Args[1:]))
	case "hold":
		os.Setenv(fakeEnv, "1")
		os.Exit(holdLab())
	}
	os.Setenv(fakeEnv, "1") // inherited by the fake agents and CLIs
	os.Exit(m.Run())
}

// fakeWeftBin returns the path to use as Config.WeftBin.
func fakeWeftBin(t testing.TB) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// holdLab is a lab process for the signal and crash tests: it builds a
// two-cell lab with fake agents, prints the agent pids and waits.
func holdLab() int {
	exe, _ := os.Executable()
	l, err := New(Config{Cells: 2, WeftBin: exe}) // Dir made by New
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Printf("ready %d %d\n", l.Cells[0].PID(), l.Cells[1].PID())
	select {}
}

func fakeWeft(args []string) int {
	socket := ""
	if len(args) >= 2 && args[0] == "--socket" {
		socket, args = args[1], args[2:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "fake weft: no command")
		return 2
	}
	switch args[0] {
	case "init":
		fs := flag.NewFlagSet("init", flag.ContinueOnError)
		dir := fs.String("state-dir", "", "")
		key := fs.String("cluster-key", "", "")
		if fs.Parse(args[1:]) != nil {
			return 2
		}
		ck := []byte(fmt.Sprintf("key-%d\n", time.Now().UnixNano()))
		if *key != "" {
			var err error
			if ck, err = os.ReadFile(*key); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		os.MkdirAll(*dir, 0o700)
		os.WriteFile(filepath.Join(*dir, "cluster.key"), ck, 0o600)
		os.WriteFile(filepath.Join(*dir, "wireguard.key"), []byte("wg\n"), 0o600)
		return 0
	case "agent":
		return fakeAgent(args[1:])
	}
	// Any other command goes to the agent.
	c, err := net.Dial("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake weft:", err)
		return 1
	}
	defer c.Close()
	fmt.Fprintln(c, strings.Join(args, "\x00"))
	reply, _ := io.ReadAll(c)
	if msg, ok := strings.CutPrefix(string(reply), "ERR "); ok {
		fmt.Fprint(os.Stderr, msg)
		return 1
	}
	os.Stdout.Write(reply)
	return 0
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func fakeAgent(args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	name := fs.String("name", "", "")
	stateDir := fs.String("state-dir", "", "")
	bind := fs.String("bind", "", "")
	fs.Int("wg-port", 0, "")
	iface := fs.String("interface", "", "")
	socket := fs.String("socket", "", "")
	var joins multiFlag
	fs.Var(&joins, "join", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if _, err := os.Stat(filepath.Join(*stateDir, "cluster.key")); err != nil {
		fmt.Fprintln(os.Stderr, "fake agent: not initialised:", err)
		return 1
	}
	gossip, err := net.Listen("tcp", *bind) // only works inside the cell netns
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 1
	}
	go func() {
		for {
			c, err := gossip.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, *name)
			c.Close()
		}
	}()
	members := []map[string]string{{"name": *name, "state": "alive"}}
	for _, j := range joins {
		c, err := net.DialTimeout("tcp", j, 2*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake agent: join:", err)
			continue
		}
		peer, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		members = append(members, map[string]string{"name": strings.TrimSpace(peer), "state": "alive"})
	}
	os.MkdirAll(uapiDir, 0o755)
	uapiPath := filepath.Join(uapiDir, *iface+".sock")
	os.Remove(uapiPath)
	if uapi, err := net.Listen("unix", uapiPath); err == nil {
		uapi.(*net.UnixListener).SetUnlinkOnClose(false) // like a SIGKILLed agent
	}
	os.Remove(*socket)
	api, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "fake agent %s up on %s, joined %v\n", *name, *bind, joins)

	octet := net.ParseIP(strings.Split(*bind, ":")[0]).To4()[3]
	subnet := fmt.Sprintf("10.255.%d.0/24", octet-10)
	leasedAt := time.Now().Add(200 * time.Millisecond)
	var mu sync.Mutex
	containers := map[string]string{}
	handle := func(cmd []string) string {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case cmd[0] == "status":
			st := map[string]any{"name": *name, "subnet": "", "members": members, "peers": []any{}, "extra": 1}
			if time.Now().After(leasedAt) {
				st["subnet"] = subnet
			}
			b, _ := json.Marshal(st)
			return string(b) + "\n"
		case len(cmd) == 6 && cmd[0] == "container" && cmd[1] == "create":
			cname := cmd[5]
			if err := newNamedNetns(cname, false); err != nil {
				return "ERR " + err.Error()
			}
			ip := fmt.Sprintf("10.255.%d.%d", octet-10, len(containers)+2)
			containers[cname] = ip
			return ip + "\n"
		case len(cmd) == 3 && cmd[0] == "container" && cmd[1] == "delete":
			delete(containers, cmd[2])
			if err := deleteNetns(cmd[2]); err != nil {
				return "ERR " + err.Error()
			}
			return ""
		}
		return "ERR unknown command " + strings.Join(cmd, " ")
	}
	go func() {
		for {
			c, err := api.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			io.WriteString(c, handle(strings.Split(strings.TrimSpace(line), "\x00")))
			c.Close()
		}
	}()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	sig := <-sigc
	fmt.Fprintf(os.Stderr, "fake agent %s: %v, exiting\n", *name, sig)
	api.Close()
	os.Remove(uapiPath)
	return 0
}
