package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/cellapi"
)

// criArgs is CNI_ARGS as containerd's CRI plugin sends it (toCNILabels in
// internal/cri/server/sandbox_run.go: K8S_POD_NAMESPACE, K8S_POD_NAME,
// K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID and IgnoreUnknown=1).
const criArgs = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7d9c8b6f5-x2k9p;" +
	"K8S_POD_INFRA_CONTAINER_ID=0f3b6c1d2e4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c;" +
	"K8S_POD_UID=6f1c2a8e-0b7d-4c55-9a11-2f3e4d5c6b7a;IgnoreUnknown=1"

// criConf is a plugin config with the runtimeConfig containerd's CRI plugin
// builds (cniNamespaceOpts: pod annotations always; port mappings, DNS and
// bandwidth when the pod has them), annotations as given.
func criConf(annotations string) string {
	return `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","runtimeConfig":{` +
		`"io.kubernetes.cri.pod-annotations":` + annotations + `,` +
		`"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}],` +
		`"dns":{"servers":["10.96.0.10"],"searches":["shop.svc.cluster.local"],"options":["ndots:5"]}}}`
}

func TestAppOf(t *testing.T) {
	for _, tc := range []struct {
		conf, args string
		want       string
		code       uint // 0: no error
	}{
		{`{}`, "APP=appA", "appA", 0},
		{`{"runtimeConfig": {"app": "appB"}}`, "", "appB", 0},
		{`{"runtimeConfig": {"app": "appB"}}`, "APP=appB", "appB", 0},
		{`{"runtimeConfig": {"app": "appB"}}`, "APP=appA", "appA", 0}, // CNI_ARGS first
		{`{}`, "", "", types.ErrInvalidEnvironmentVariables},
		{`{}`, "APP=a/b", "", types.ErrInvalidEnvironmentVariables},
		// Cloud Foundry org and space qualify the app (both or neither).
		{`{}`, "APP=appA;ORG=o1;SPACE=s1", "o1/s1/appA", 0},
		{`{}`, "APP=o1/s1/appA", "o1/s1/appA", 0},
		{`{"runtimeConfig": {"app": "appB"}}`, "ORG=o1;SPACE=s1", "o1/s1/appB", 0},
		{`{}`, "APP=appA;SPACE=s1", "", types.ErrInvalidEnvironmentVariables},
		{`{}`, "APP=appA;ORG=o1", "", types.ErrInvalidEnvironmentVariables},
		{`{}`, "APP=o1/s1/appA;ORG=o1;SPACE=s1", "", types.ErrInvalidEnvironmentVariables},
		{`{}`, "APP=appA;ORG=o 1;SPACE=s1", "", types.ErrInvalidEnvironmentVariables},
		{`{}`, "OTHER=x", "", types.ErrInvalidEnvironmentVariables},          // unknown key
		{`{}`, "OTHER=x;APP=appC", "", types.ErrInvalidEnvironmentVariables}, // unknown key, no IgnoreUnknown
		{`{}`, "IgnoreUnknown=1;OTHER=x;APP=appC", "appC", 0},                // ignored
		{`{}`, "IgnoreUnknown=true;OTHER=x;APP=appC", "appC", 0},             // ignored
		{`{}`, "APP=x;K8S_POD_NAME=foo", "x", 0},                             // K8S_* are known keys
		{`{}`, "K8S_POD_NAME=x", "", types.ErrInvalidEnvironmentVariables},   // no namespace: no default
		{`{}`, "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=db-0", "db.ns", 0},
		// containerd's CRI plugin, with and without the annotation.
		{criConf(`{"weft.dev/app":"checkout"}`), criArgs, "checkout", 0},
		{criConf(`{"other":"x"}`), criArgs, "web.shop", 0},
		{criConf(`{}`), criArgs, "web.shop", 0},
		{criConf(`{"weft.dev/app":"bad app"}`), criArgs, "", types.ErrInvalidEnvironmentVariables},
		{criConf(`{"weft.dev/app":"checkout"}`), criArgs + ";APP=front", "front", 0},
		{`{"runtimeConfig":{"app":"rt","io.kubernetes.cri.pod-annotations":{"weft.dev/app":"ann"}}}`, criArgs, "rt", 0},
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

// The error without any app names every way to set one.
func TestNoAppError(t *testing.T) {
	conf, _ := loadConf([]byte(`{}`))
	_, err := appOf(conf, &skel.CmdArgs{Args: "IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID=x"})
	for _, want := range []string{"APP=NAME", `{"app": "NAME"}`, "weft.dev/app", "io.kubernetes.cri.pod-annotations", "K8S_POD_NAMESPACE"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

func TestPodBase(t *testing.T) {
	for name, want := range map[string]string{
		"web-7d9c8b6f5-x2k9p":        "web",            // Deployment
		"api-server-5c9f7b8d4-zq2m7": "api-server",     // Deployment, a dash in its name
		"web-b8f9c6q4w7":             "web-b8f9c6q4w7", // no random suffix: kept
		"fluentd-x7z2p":              "fluentd",        // DaemonSet / ReplicaSet / Job
		"db-0":                       "db",             // StatefulSet
		"db-12":                      "db",
		"redis":                      "redis",    // bare pod
		"my-redis":                   "my-redis", // "redis" has vowels: not a random suffix
		"api-v2":                     "api-v2",
		"x2k9p":                      "x2k9p",
		"-x2k9p":                     "-x2k9p",
	} {
		if got := podBase(name); got != want {
			t.Errorf("podBase(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestDefaultSocket(t *testing.T) {
	conf, err := loadConf([]byte(`{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}`))
	if err != nil || conf.Socket != cellapi.DefaultSocket {
		t.Fatalf("socket %q err %v, want %s", conf.Socket, err, cellapi.DefaultSocket)
	}
}

func TestResult(t *testing.T) {
	res, err := resultOf(&cellapi.Attachment{IP: "10.255.2.2", Gateway: "169.254.0.1", IfName: "eth0",
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
	if _, err := resultOf(&cellapi.Attachment{IP: "nonsense", Gateway: "169.254.0.1"}, "/x"); err == nil {
		t.Error("bad IP accepted")
	}
}
