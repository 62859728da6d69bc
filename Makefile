SHELL := /bin/bash
# weft: `make demo` tells the c2c story in network namespaces on this machine;
# `make test` runs unit and e2e tests (e2e needs root and /dev/net/tun; under
# CI=true they must run, elsewhere they skip without root).

GO      ?= go
BIN     := bin
PKGS_RACE := ./policy/... ./mesh/... ./overlay/... ./attach/... ./cell/... ./cellapi/... ./cmd/...
# `weft version`, weft_build_info and `weft status` show this.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/weft-net/weft/internal/buildinfo.version=$(VERSION)

.PHONY: all build test unit e2e lint demo bench bench-throughput clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/weft ./cmd/weft
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/weft-cni ./cmd/weft-cni
	$(GO) build -o $(BIN)/weft-httpapp ./internal/lab/cmd/weft-httpapp
	$(GO) build -o $(BIN)/weft-demo ./internal/lab/cmd/weft-demo

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 $(PKGS_RACE)
	$(GO) test -count=1 ./bench/...
	cd third_party/wireguard-go && $(GO) test -count=1 ./tun/
	cd third_party/wireguard-go && $(GO) test -race -count=1 ./conn/
	cd third_party/wireguard-go && $(GO) test -race -count=1 ./device/
	cd third_party/wireguard-go && WG_RUN_TO_COMPLETION=1 $(GO) test -race -count=1 ./device/
	cd third_party/wireguard-go && WG_RUN_TO_COMPLETION=1 WG_BIND=direct $(GO) test -race -count=1 ./device/

e2e:
	$(GO) test -count=1 -timeout 30m ./internal/... ./e2e/...

test: lint unit e2e

demo: build
	$(BIN)/weft-demo -weft $(BIN)/weft -app $(BIN)/weft-httpapp

# The benchmark ladder (docs/performance.md): one run, about 4 minutes, then
# the table. BENCHFLAGS passes more, e.g. BENCHFLAGS='-ladder.profile=prof'.
# The run is also kept as data: bench/results/<UTC date-time>_<commit>.json
# (commit, date, machine, command, every benchmark line's metrics), which
# `go run ./bench/cmd/benchtable -in FILE` renders again and
# `go run ./bench/cmd/benchtable -compare OLD NEW` compares.
BENCHFLAGS ?=
BENCHCMD = $(GO) test -run '^$$' -bench Ladder -benchtime 1x -count 1 -timeout 15m ./bench/ -args $(BENCHFLAGS)
bench: build
	$(GO) build -o $(BIN)/benchtable ./bench/cmd/benchtable
	set -o pipefail; $(BENCHCMD) | $(BIN)/benchtable -save bench/results -cmd "$(BENCHCMD)"

bench-throughput: build
	$(GO) test -run '^$$' -bench Throughput -benchtime 3x -count 1 ./bench/

clean:
	rm -rf $(BIN) e2e.out
