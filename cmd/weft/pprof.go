package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"runtime"
	rpprof "runtime/pprof"
	"time"
)

// startProfiling serves net/http/pprof on addr (loopback only) with block
// and mutex profiling enabled, and writes a CPU profile of the whole run to
// $WEFT_CPUPROFILE at exit. Both are for benchmarks; the returned function
// stops them.
func startProfiling(addr string, log *slog.Logger) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	if addr != "" {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || !ap.Addr().IsLoopback() {
			return nil, fmt.Errorf("--pprof-addr %q: want a loopback IP:PORT", addr)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("--pprof-addr: %w", err)
		}
		runtime.SetBlockProfileRate(int(10 * time.Microsecond))
		runtime.SetMutexProfileFraction(100)
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		stops = append(stops, func() { srv.Close() })
		log.Info("pprof serving", "addr", addr)
	}
	if path := os.Getenv("WEFT_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			stop()
			return nil, fmt.Errorf("WEFT_CPUPROFILE: %w", err)
		}
		if err := rpprof.StartCPUProfile(f); err != nil {
			f.Close()
			stop()
			return nil, errors.Join(errors.New("WEFT_CPUPROFILE"), err)
		}
		stops = append(stops, func() { rpprof.StopCPUProfile(); f.Close() })
		log.Info("writing CPU profile at exit", "path", path)
	}
	return stop, nil
}
