package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/cell"
)

func TestAppOf(t *testing.T) {
	for _, tc := range []struct {
		conf, args string
		want       string
		code       uint // 0: no error
	}{
		{`{}`, "APP=appA", "appA", 0},
		{`{"runtimeConfig": {"app": "appB"}}`, "", "appB", 0},
		{`{"runtimeConfig": {"app": "appB"}}`, "APP=appB", "appB", 0},
		{`{"runtimeConfig": {"app": "appB"}}`, "APP=appA", "", types.ErrInvalidEnvironmentVariables},
		{`{}`, "", "", types.ErrInvalidEnvironmentVariables},
		{`{}`, "K8S_POD_NAME=x", "", types.ErrInvalidEnvironmentVariables},
		{`{}`, "IgnoreUnknown=1;K8S_POD_NAME=x;APP=appC", "appC", 0},
	} {
		conf, err := loadConf([]byte(tc.conf))
		if err != nil {
			t.Fatal(err)
		}
		got, err := appOf(conf, &skel.CmdArgs{Args: tc.args})
		var code uint
		if e, ok := err.(*types.Error); ok {
			code = e.Code
		} else if err != nil {
			t.Fatalf("%s %q: error %v is not a CNI error", tc.conf, tc.args, err)
		}
		if got != tc.want || code != tc.code {
			t.Errorf("%s %q: got %q code %d, want %q code %d (%v)", tc.conf, tc.args, got, code, tc.want, tc.code, err)
		}
	}
}

func TestDefaultSocket(t *testing.T) {
	conf, err := loadConf([]byte(`{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}`))
	if err != nil || conf.Socket != cell.DefaultSocket {
		t.Fatalf("socket %q err %v, want %s", conf.Socket, err, cell.DefaultSocket)
	}
}

func TestResult(t *testing.T) {
	res, err := resultOf(&cell.Attachment{IP: "10.255.2.2", Gateway: "169.254.0.1", IfName: "eth0",
		MAC: "0e:fe:32:67:8a:3b", HostVeth: "wc0123456789", HostMAC: "1e:53:6c:c9:ef:bf"}, "/run/netns/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res)
	for _, want := range []string{`"address":"10.255.2.2/32"`, `"gateway":"169.254.0.1"`, `"dst":"0.0.0.0/0","gw":"169.254.0.1"`,
		`"sandbox":"/run/netns/x"`, `"interface":1`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("result %s lacks %s", b, want)
		}
	}
	if _, err := resultOf(&cell.Attachment{IP: "nonsense", Gateway: "169.254.0.1"}, "/x"); err == nil {
		t.Error("bad IP accepted")
	}
}
