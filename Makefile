# ds01-detectord. Two test tiers:
#   make test-unit  = plain `go test ./...`: any user, no root, Docker, jq or
#                   tmux, no network: unit tests, the reconcile tables,
#                   fixture trees, the NVML mock and the real daemon
#                   without Docker (about a minute)
#   make test       everything (build tags integration and e2e): needs
#                   root; it installs the packages the integration tests use
#                   when they are missing (docker.io, jq, systemd-container,
#                   ...) and starts private dockerd instances on their own
#                   sockets and a systemd in nspawn.
GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION) $(addprefix -X github.com/prometheus/common/version.,Version=$(VERSION) Revision=$(shell git rev-parse HEAD 2>/dev/null) Branch=$(shell git rev-parse --abbrev-ref HEAD 2>/dev/null) BuildDate=$(shell date -u -d @$${SOURCE_DATE_EPOCH:-$$(date +%s)} +%Y%m%d-%H:%M:%S))
BINARIES := ds01-detectord ds01-workloads
RUNDIR   ?= $(CURDIR)/run
TEST_PKGS ?= ./...
FUZZTIME ?= 30s
# The build tools (nfpm, go-md2man, staticcheck) are pinned in a module of
# their own, tools/go.mod: $(call TOOL,name) is the path of the tool's
# binary, built by the go command into its cache.
TOOL = "$$($(GO) -C tools tool -n $(1))"
# go-nvml's cgo preamble warns about every deprecated NVML call; silence it.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

PREFIX      ?= /usr/local
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
UNITDIR     ?= $(PREFIX)/lib/systemd/system
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DOCDIR      ?= $(PREFIX)/share/doc/ds01-detectord
SYSCONFDIR  ?= /etc

.PHONY: all cc build man demo test test-unit test-deps run lint bench fuzz fuzz-corpus clean install uninstall deploy e2e deb

all: build

# go-nvml needs cgo, so a C compiler: installed with apt-get when missing
# and running as root, otherwise a clear message.
cc:
	@command -v gcc >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing gcc (cgo, for NVML)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null || exit 1; \
		else \
			echo "a C compiler is needed (cgo, for NVML): run 'sudo apt-get install gcc' or 'sudo make build'" >&2; exit 1; \
		fi; }

build: cc
	@mkdir -p bin
	CGO_ENABLED=1 $(GO) build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

# Packages the tests need, installed with apt-get when missing (root only).
TEST_DEBS := dockerd:docker.io jq:jq python3:python3 systemd-nspawn:systemd-container debootstrap:debootstrap nsenter:util-linux promtool:prometheus tmux:tmux lintian:lintian man:man-db

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

# The fast tier, what a plain `go test ./...` runs: the tests that need a
# private dockerd, root, real cgroup writes, tmux, jq or promtool are behind
# the build tag integration, the systemd-nspawn ones behind e2e.
test-unit: cc
	CGO_ENABLED=1 $(GO) test -count=1 -timeout 5m $(TEST_PKGS)

# Every test: unit, integration against private dockerd instances (build
# tag integration), the end-to-end run under a real systemd (build tag
# e2e), and the Grafana dashboard's PromQL (tools/dashboard: the PromQL
# parser stays out of the product's go.mod).
# One package at a time (-p 1): several tests watch their daemon's timing
# (kill -9 windows of 20-420 ms, a connection flood), and two packages'
# dockerds and daemons side by side on 2 cores failed them now and then.
test: cc test-deps
	CGO_ENABLED=1 $(GO) test -p 1 -race -count=1 -timeout 30m -tags integration,e2e $(TEST_PKGS)
	$(GO) -C tools test -count=1 ./...

# Only the end-to-end test: boots a Debian tree (debootstrapped once into
# /var/cache/ds01-e2e) in systemd-nspawn, installs the build into it and
# drives the unit with systemctl and journalctl.
e2e: cc test-deps
	CGO_ENABLED=1 $(GO) test -count=1 -timeout 10m -tags e2e -v -run TestUnderRealSystemd ./internal/e2e/

# The man pages into bin/man, their OPTIONS made by the binaries:
# `man -l bin/man/ds01-workloads.1`.
man: build
	GO='$(GO)' sh packaging/man.sh bin bin/man

# The product in a minute without a GPU server (root: a private dockerd, as
# the tests start): containers of every origin, host processes and the
# stand-in NVML library; shows ds01-workloads, gpus and report, and removes
# everything it started on Ctrl-C. DEMO_FLAGS=--no-wait ends after showing.
demo: build
	@[ "$$(id -u)" = 0 ] || { echo "make demo starts a private dockerd: run 'sudo make demo'" >&2; exit 1; }
	@command -v dockerd >/dev/null 2>&1 || { echo "installing docker.io (dockerd)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }
	@$(GO) build -o bin/.demo ./internal/demo
	@./bin/.demo --bin bin $(DEMO_FLAGS)

# Runs the daemon in the foreground against the local Docker, with its state
# and events under ./run. Ctrl-C stops it; `kill -HUP` forces a rescan.
run: build
	@mkdir -p $(RUNDIR)
	./bin/ds01-detectord --log-format console \
		--state-file $(RUNDIR)/workload-inventory.json \
		--events-file $(RUNDIR)/events.jsonl

# gofmt, go vet and staticcheck (pinned in tools/go.mod).
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>&1); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags integration,e2e ./...
	$(GO) -C tools vet ./...
	$(call TOOL,staticcheck) -tags integration,e2e ./...

# Benchmarks against private dockerd instances: the 200-container scan cycle,
# the NVML cycle with and without utilisation (go-nvml mock, 8 GPUs x 50
# processes; one JSON line, goal nvml_utilization_ratio <= 1.2), the GPU
# sampler's CPU at 8 GPUs x 50 processes (gpu_sampler_cpu_ms_per_s, goal
# <= 10) and a new GPU process's time to the state file at --interval 30s
# (gpu_detect_latency_ms_p95, goal <= 2,000), then the
# 1,000-container run of the real daemon, which ends with one JSON line.
bench: cc test-deps
	$(GO) test -tags integration -run '^$$' -bench BenchmarkScanCycle -benchtime 20x -timeout 30m ./internal/cycle/
	$(GO) test -tags integration -run '^$$' -bench BenchmarkNVMLCycle -benchtime 100x -timeout 10m ./internal/cycle/
	$(GO) test -tags integration -run '^$$' -bench 'BenchmarkGPUSampler|BenchmarkGPUDetectLatency' -benchtime 1x -timeout 10m ./internal/cycle/
	$(GO) test -run '^$$' -bench BenchmarkSealCost -benchtime 50x ./internal/statefile/
	$(GO) test -tags integration -run '^$$' -bench Benchmark1000Containers -benchtime 1x -timeout 30m ./internal/bench/

# Installs the binaries, the unit (pointing at $(BINDIR)), the tmpfiles
# snippet that creates the directories, the README, and a default flags
# file (kept when it exists).
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR)/default
	install -m 0755 $(addprefix bin/,$(BINARIES)) $(DESTDIR)$(BINDIR)/
	sed 's|/usr/bin/ds01-detectord|$(BINDIR)/ds01-detectord|' systemd/ds01-detectord.service > $(DESTDIR)$(UNITDIR)/ds01-detectord.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ds01-detectord.service
	install -m 0644 systemd/ds01-detectord.tmpfiles $(DESTDIR)$(TMPFILESDIR)/ds01-detectord.conf
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	[ -e $(DESTDIR)$(SYSCONFDIR)/default/ds01-detectord ] || install -m 0644 systemd/ds01-detectord.default $(DESTDIR)$(SYSCONFDIR)/default/ds01-detectord

# What the old deploy step did, on this host, as root: install, create the
# state and log directories with their ownership (root:docker 0775), reload
# systemd, retire the Python scanner (stop, disable, move its unit files to
# /var/backups/ds01-detectord, mask: the script the package's postinst
# runs) and enable --now the daemon.
deploy: install
	getent group docker >/dev/null || groupadd --system docker
	systemd-tmpfiles --create $(TMPFILESDIR)/ds01-detectord.conf
	systemctl daemon-reload
	sh packaging/retire-legacy.sh
	systemctl enable --now ds01-detectord.service

# Stops and removes everything install put in place. The state and the
# event log stay (they are data); PURGE=1 removes /var/lib/ds01's state file too.
uninstall:
	-[ -n "$(DESTDIR)" ] || systemctl disable --now ds01-detectord.service 2>/dev/null
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(BINARIES))
	rm -f $(DESTDIR)$(UNITDIR)/ds01-detectord.service $(DESTDIR)$(TMPFILESDIR)/ds01-detectord.conf
	rm -f $(DESTDIR)$(SYSCONFDIR)/default/ds01-detectord
	rm -rf $(DESTDIR)$(DOCDIR)
	[ -z "$(PURGE)" ] || rm -f $(DESTDIR)/var/lib/ds01/workload-inventory.json
	-[ -n "$(DESTDIR)" ] || systemctl daemon-reload

# Each fuzz target for FUZZTIME. Inputs that found new coverage go to Go's
# fuzz cache; `make fuzz-corpus` copies them into testdata/fuzz, where plain
# `go test` replays them.
FUZZ_TARGETS := FuzzParseCgroup:./internal/source/proc FuzzStatAndCmdline:./internal/source/proc \
	FuzzParse:./internal/statefile FuzzEncode:./pkg/event FuzzReader:./pkg/event FuzzUserAndLabels:./internal/classify \
	FuzzIndentCompact:./internal/asciijson FuzzBytes:./internal/textcut FuzzParse:./internal/policy \
	FuzzCounters:./internal/source/activity FuzzDecodeSummaries:./internal/source/docker/bounded \
	FuzzStateSealer:./internal/seal

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		name=$${t%%:*}; pkg=$${t#*:}; \
		echo "== $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg || exit 1; \
	done

fuzz-corpus:
	@for t in $(FUZZ_TARGETS); do \
		name=$${t%%:*}; pkg=$${t#*:}; \
		src=$$($(GO) env GOCACHE)/fuzz/github.com/ds01/ds01-detectord/$${pkg#./}/$$name; \
		[ -d "$$src" ] || continue; \
		mkdir -p $$pkg/testdata/fuzz/$$name && cp $$src/* $$pkg/testdata/fuzz/$$name/; \
	done

# The Debian package, into $(DIST): ds01-detectord_<version>-<release>_<arch>.deb
# with nfpm (pinned in tools/go.mod) and packaging/nfpm.yaml. The binaries are
# built here with VERSION (`make deb VERSION=1.2.3`); packaging/deb-version.sh
# turns it, or the default git describe, into a Debian version. The man pages
# come from docs/man with the OPTIONS the binaries print (packaging/man.sh), the completions from ds01-workloads itself,
# libc6's minimum version from the binaries' symbols. DIST=/some/dir puts
# the package elsewhere.
DIST           ?= $(CURDIR)/dist
DEB_RELEASE    ?= 1
DEB_MAINTAINER ?= DS01 Infrastructure <ds01-infra@example.org>
DEB_STAGE      := $(DIST)/.stage
# Debian's hardening (PIE, hence RELRO) and stripped binaries (lintian's
# unstripped-binary-or-object is an error); panics keep their stack traces.
DEB_GOFLAGS    ?= -trimpath -buildmode=pie
DEB_LDFLAGS    ?= -s -w

deb: cc
	@debver=$$(sh packaging/deb-version.sh '$(VERSION)') || exit 1; \
	epoch=$$(git log -1 --format=%ct 2>/dev/null || date +%s); \
	set -e; stage='$(DEB_STAGE)'; \
	rm -rf "$$stage"; mkdir -p "$$stage/bin"; \
	echo "building ds01-detectord $$debver-$(DEB_RELEASE) (VERSION=$(VERSION))"; \
	CGO_ENABLED=1 $(GO) build $(DEB_GOFLAGS) -ldflags '$(DEB_LDFLAGS) $(LDFLAGS)' -o "$$stage/bin/" ./cmd/...; \
	GO='$(GO)' sh packaging/man.sh "$$stage/bin" "$$stage"; \
	gzip -9nf "$$stage/ds01-detectord.8" "$$stage/ds01-workloads.1"; \
	"$$stage/bin/ds01-workloads" completion bash > "$$stage/ds01-workloads.bash"; \
	"$$stage/bin/ds01-workloads" completion zsh > "$$stage/ds01-workloads.zsh"; \
	"$$stage/bin/ds01-workloads" completion fish > "$$stage/ds01-workloads.fish"; \
	printf 'ds01-detectord (%s) unstable; urgency=medium\n\n  * Built from %s (git %s).\n\n -- %s  %s\n' \
		"$$debver-$(DEB_RELEASE)" '$(VERSION)' "$$(git rev-parse --short HEAD 2>/dev/null || echo none)" \
		'$(DEB_MAINTAINER)' "$$(LC_ALL=C date -u -R -d @$$epoch)" > "$$stage/changelog.Debian"; \
	gzip -9nf "$$stage/changelog.Debian"; \
	libc=$$(objdump -T "$$stage"/bin/* | sed -n 's/.*GLIBC_\([0-9][0-9.]*\).*/\1/p' | sort -uV | tail -n 1); \
	[ -n "$$libc" ] || { echo "make deb: no GLIBC symbol versions in the binaries (objdump -T)" >&2; exit 1; }; \
	mkdir -p '$(DIST)'; \
	DEB_VERSION="$$debver" DEB_RELEASE='$(DEB_RELEASE)' DEB_ARCH="$$($(GO) env GOARCH)" DEB_STAGE="$$stage" \
	DEB_LIBC="$$libc" DEB_MAINTAINER='$(DEB_MAINTAINER)' SOURCE_DATE_EPOCH="$$epoch" \
		$(call TOOL,nfpm) package -f packaging/nfpm.yaml -p deb -t '$(DIST)/'; \
	rm -rf "$$stage"

clean:
	rm -rf bin run dist
