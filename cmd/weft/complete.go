package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/policy"
)

// completeTimeout bounds the agent's answer to a completion: a shell waits
// for it.
const completeTimeout = 2 * time.Second

// agentApps returns the app names the agent knows (GET /v1/apps), nil when
// no agent answers.
func agentApps() []string {
	c, cancel := context.WithTimeout(context.Background(), completeTimeout)
	defer cancel()
	apps, err := client().Apps(c)
	if err != nil {
		return nil
	}
	return apps
}

// completeAppPair completes SOURCE_APP DESTINATION_APP from the agent. With
// -s SPACE and -o ORG given, the destination completes among the apps of
// that org and space, without the prefix (the flags add it).
func completeAppPair(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) >= 2 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	prefix := ""
	if len(args) == 1 {
		space, _ := cmd.Flags().GetString("space")
		org, _ := cmd.Flags().GetString("org")
		if space != "" && org != "" {
			prefix = policy.QualifyApp(org, space, "")
		}
	}
	return matchApps(agentApps(), prefix, toComplete), cobra.ShellCompDirectiveNoFileComp
}

// completeApp completes one app name (a flag's value).
func completeApp(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return matchApps(agentApps(), "", toComplete), cobra.ShellCompDirectiveNoFileComp
}

// matchApps returns the apps under prefix (which it cuts) that start with
// toComplete.
func matchApps(apps []string, prefix, toComplete string) []string {
	var out []string
	for _, a := range apps {
		rest, ok := strings.CutPrefix(a, prefix)
		if ok && rest != "" && strings.HasPrefix(rest, toComplete) && (prefix == "" || !strings.Contains(rest, "/")) {
			out = append(out, rest)
		}
	}
	return out
}
