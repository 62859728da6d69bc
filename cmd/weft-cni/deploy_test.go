package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The Kubernetes files in deploy/kubernetes parse, the DaemonSet installs
// the same conflist as the file beside it, and that conflist is one this
// plugin accepts, with the capabilities that carry the app.
func TestDeployKubernetes(t *testing.T) {
	conflist, err := os.ReadFile("../../deploy/kubernetes/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string            `json:"cniVersion"`
		Name       string            `json:"name"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(conflist, &list); err != nil || len(list.Plugins) != 1 || list.CNIVersion != "1.1.0" {
		t.Fatalf("10-weft.conflist: %v %+v", err, list)
	}
	conf, err := loadConf(list.Plugins[0])
	if err != nil || conf.Type != "weft-cni" || conf.Socket != "/run/weft/weft.sock" ||
		!conf.Capabilities["app"] || !conf.Capabilities[capPodAnnotations] {
		t.Fatalf("plugin config %s: %+v %v", list.Plugins[0], conf, err)
	}

	f, err := os.Open("../../deploy/kubernetes/weft-daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	kinds := map[string]map[string]any{}
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("weft-daemonset.yaml: %v", err)
		}
		kinds[doc["kind"].(string)] = doc
	}
	cm, ds := kinds["ConfigMap"], kinds["DaemonSet"]
	if cm == nil || ds == nil {
		t.Fatalf("weft-daemonset.yaml has %v, want a ConfigMap and a DaemonSet", kinds)
	}
	inCM := cm["data"].(map[string]any)["10-weft.conflist"].(string)
	var a, b bytes.Buffer
	json.Compact(&a, conflist)
	json.Compact(&b, []byte(inCM))
	if a.String() != b.String() {
		t.Errorf("the ConfigMap's conflist differs from 10-weft.conflist:\n%s\n%s", b.String(), a.String())
	}
	spec := ds["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	if spec["hostNetwork"] != true {
		t.Error("the DaemonSet does not run on the host network")
	}
}
