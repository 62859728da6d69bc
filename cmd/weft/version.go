package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/internal/buildinfo"
)

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the version of this weft binary (`weft status` shows every cell's)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "weft %s (%s %s/%s)\n",
				buildinfo.Version(), buildinfo.GoVersion(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
