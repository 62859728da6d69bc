package main

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/policy"
)

// The app of a container, from what container runtimes send. The first of
// these that is present wins:
//
//  1. CNI_ARGS "APP=NAME" (cnitool, scripts, nerdctl --cni-args);
//  2. runtimeConfig {"app": "NAME"} (capability "app");
//  3. the pod annotation weft.dev/app, passed by containerd's and CRI-O's
//     CRI plugins as runtimeConfig {"io.kubernetes.cri.pod-annotations":
//     {...}} when the conflist declares that capability;
//  4. the pod: K8S_POD_NAME and K8S_POD_NAMESPACE of CNI_ARGS give
//     "BASE.NAMESPACE", where BASE is the pod name without the suffixes
//     Kubernetes controllers add (podBase), so all pods of a Deployment,
//     ReplicaSet, DaemonSet, Job or StatefulSet share one app.
//
// Without any of them ADD fails with CNI error 4, naming what to set.
//
// CNI_ARGS "ORG=O;SPACE=S" (both or neither) qualify the app as a Cloud
// Foundry app of that org and space: it registers as O/S/APP, which rules
// name that way (docs/policy.md, "Orgs and spaces").

// AnnotationApp is the pod annotation that names a pod's app.
const AnnotationApp = "weft.dev/app"

// capPodAnnotations is the capability (runtimeConfig key) under which
// containerd's CRI plugin passes a pod's annotations.
const capPodAnnotations = "io.kubernetes.cri.pod-annotations"

// Args are the CNI_ARGS the plugin reads: APP, and the keys containerd's
// CRI plugin (and kubelet's dockershim, CRI-O) send with every call. Other
// keys are an error unless IgnoreUnknown=1 (or true) is among them, as the
// CNI conventions say.
type Args struct {
	types.CommonArgs
	APP                        types.UnmarshallableString
	ORG                        types.UnmarshallableString
	SPACE                      types.UnmarshallableString
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
}

// Suffixes that Kubernetes controllers append to pod names. Both use the
// alphabet of k8s.io/apimachinery/pkg/util/rand.SafeEncodeString (no
// vowels, no 0, 1 or 3), so words are rarely mistaken for them.
var (
	// generateName: "-" and 5 random characters (pods of ReplicaSets,
	// DaemonSets, Jobs).
	randomSuffix = regexp.MustCompile(`-[bcdfghjklmnpqrstvwxz2456789]{5}$`)
	// pod-template-hash: a Deployment names its ReplicaSets
	// DEPLOYMENT-HASH, the hash 6 to 10 characters of the same alphabet.
	templateHash = regexp.MustCompile(`-[bcdfghjklmnpqrstvwxz2456789]{6,10}$`)
	// A StatefulSet's pods are NAME-ORDINAL.
	ordinal = regexp.MustCompile(`-(0|[1-9][0-9]*)$`)
)

// podBase is the pod name without its controller suffix: "web-7d9c8b6f5-x2k9p"
// (a Deployment's pod) -> "web", "agent-x2k9p" (DaemonSet) -> "agent",
// "db-0" (StatefulSet) -> "db"; a name without such a suffix stays as it is.
func podBase(name string) string {
	if base := randomSuffix.ReplaceAllString(name, ""); base != name && base != "" {
		if b := templateHash.ReplaceAllString(base, ""); b != "" {
			return b
		}
		return base
	}
	if base := ordinal.ReplaceAllString(name, ""); base != "" {
		return base
	}
	return name
}

// appOf returns the container's app from what the runtime sent (see the
// order above).
func appOf(conf *NetConf, args *skel.CmdArgs) (string, error) {
	var a Args
	if err := types.LoadArgs(args.Args, &a); err != nil {
		return "", types.NewError(types.ErrInvalidEnvironmentVariables, "weft-cni: cannot parse CNI_ARGS",
			err.Error()+` (add "IgnoreUnknown=1" to CNI_ARGS to pass keys weft-cni does not know)`)
	}
	app, from := string(a.APP), "CNI_ARGS APP"
	if app == "" {
		app, from = conf.RuntimeConfig.App, `runtimeConfig "app"`
	}
	if app == "" {
		app, from = conf.RuntimeConfig.PodAnnotations[AnnotationApp], "pod annotation "+AnnotationApp
	}
	if app == "" && a.K8S_POD_NAME != "" && a.K8S_POD_NAMESPACE != "" {
		app = podBase(string(a.K8S_POD_NAME)) + "." + string(a.K8S_POD_NAMESPACE)
		from = fmt.Sprintf("pod %s/%s (K8S_POD_NAMESPACE/K8S_POD_NAME)", a.K8S_POD_NAMESPACE, a.K8S_POD_NAME)
	}
	if app == "" {
		return "", types.NewError(types.ErrInvalidEnvironmentVariables, "weft-cni: no app for this container",
			`set CNI_ARGS "APP=NAME", the runtime config {"app": "NAME"} (capability "app"), `+
				`the pod annotation `+AnnotationApp+` (capability "`+capPodAnnotations+`"), `+
				`or pass K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS`)
	}
	switch org, space := string(a.ORG), string(a.SPACE); {
	case (org == "") != (space == ""):
		return "", types.NewError(types.ErrInvalidEnvironmentVariables, "weft-cni: ORG and SPACE go together",
			fmt.Sprintf("CNI_ARGS has ORG=%q and SPACE=%q: give both (the app registers as ORG/SPACE/APP) or neither", org, space))
	case org != "" && strings.Contains(app, "/"):
		return "", types.NewError(types.ErrInvalidEnvironmentVariables, "weft-cni: app qualified twice",
			fmt.Sprintf("%q from %s is already ORG/SPACE/APP; leave ORG and SPACE out of CNI_ARGS", app, from))
	case org != "":
		app, from = policy.QualifyApp(org, space, app), from+" with CNI_ARGS ORG and SPACE"
	}
	if !policy.ValidAppName(app) {
		return "", types.NewError(types.ErrInvalidEnvironmentVariables, "weft-cni: invalid app name",
			fmt.Sprintf("%q from %s: use 1-128 letters, digits, '.', '_' or '-', or ORG/SPACE/APP of those", app, from))
	}
	return app, nil
}
