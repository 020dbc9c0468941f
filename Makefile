# ds01-detectord. `make test` needs root: it installs the packages the
# integration tests use when they are missing (docker.io, jq) and starts
# private dockerd instances on their own sockets.
GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BINARIES := ds01-detectord
RUNDIR   ?= $(CURDIR)/run
TEST_PKGS ?= ./...
FUZZTIME ?= 20s
# go-nvml's cgo preamble warns about every deprecated NVML call; silence it.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

.PHONY: all build test test-deps run lint bench fuzz clean

all: build

build:
	@mkdir -p bin
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

# Packages the tests need, installed with apt-get when missing (root only).
TEST_DEBS := dockerd:docker.io jq:jq

test-deps:
	@missing=""; for pair in $(TEST_DEBS); do \
		cmd=$${pair%%:*}; pkg=$${pair#*:}; \
		command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make test: missing packages:$$missing. Run 'sudo make test' (it installs them with apt-get)." >&2; exit 1; \
		fi; \
		echo "make test: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make test: the integration tests start private dockerd instances and must run as root: 'sudo make test'." >&2; exit 1; \
	fi

test: test-deps
	$(GO) test -race -count=1 -timeout 30m $(TEST_PKGS)

# Runs the daemon in the foreground against the local Docker, with its state
# and events under ./run. Ctrl-C stops it; `kill -HUP` forces a rescan.
run: build
	@mkdir -p $(RUNDIR)
	./bin/ds01-detectord --log-format console \
		--state-file $(RUNDIR)/workload-inventory.json \
		--events-file $(RUNDIR)/events.jsonl

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>&1); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench: test-deps
	$(GO) test -run '^$$' -bench . -benchtime 20x -timeout 30m ./...

clean:
	rm -rf bin run
