// Command ds01-detectord is the awareness layer of a shared GPU server. It
// scans Docker (and, later, NVML and /proc), writes the workload inventory
// to a state file and appends every transition to the shared event log.
//
// A scan, from here to the state file: main builds a detector.Detector with
// its sources; service.Run (or --once) calls Detector.Cycle, which lists
// containers through dockersrc, classifies them with classify, diffs them
// against what was reported, appends events through eventlog and rewrites
// the state through statefile.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/detector"
	"github.com/ds01/ds01-detectord/internal/dockersrc"
	"github.com/ds01/ds01-detectord/internal/gpu"
	"github.com/ds01/ds01-detectord/internal/logging"
	"github.com/ds01/ds01-detectord/internal/metrics"
	"github.com/ds01/ds01-detectord/internal/procfs"
	"github.com/ds01/ds01-detectord/internal/service"
	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/internal/userdb"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// version is set by the Makefile with -ldflags.
var version = "dev"

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type config struct {
	stateFile, eventsFile, dockerHost, procRoot string
	nvmlLibrary                                 string
	excludeProcesses                            listFlag
	logLevel, logFormat                         string
	interval, scanTimeout, dockerTimeout        time.Duration
	debounce                                    time.Duration
	metricsListen                               string
	keepSecrets                                 bool
	stateGroup                                  string
	once, dryRun, showVersion                   bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("ds01-detectord", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.stateFile, "state-file", inventory.DefaultPath, "state file (workload inventory) to rewrite each cycle")
	fs.StringVar(&c.eventsFile, "events-file", event.DefaultPath, "JSONL event log to append transitions to")
	fs.StringVar(&c.dockerHost, "docker-host", "", "Docker Engine address (default: $DOCKER_HOST, else unix:///var/run/docker.sock)")
	fs.StringVar(&c.nvmlLibrary, "nvml-library", "", "path of libnvidia-ml (default: the system's libnvidia-ml.so.1)")
	fs.Var(&c.excludeProcesses, "exclude-process", "process name (argv[0] basename) to leave out of host GPU processes, in addition to the reference's system list; repeatable")
	fs.StringVar(&c.procRoot, "proc-root", "/proc", "procfs root (tests point it at fixture trees)")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", logging.FormatAuto, "auto (journal under systemd, else console), console, json or journal")
	fs.DurationVar(&c.interval, "interval", 30*time.Second, "time between reconciliation scans")
	fs.DurationVar(&c.scanTimeout, "scan-timeout", 25*time.Second, "deadline of one scan")
	fs.DurationVar(&c.debounce, "event-debounce", 100*time.Millisecond, "wait this long after a Docker event for more before rescanning")
	fs.DurationVar(&c.dockerTimeout, "docker-timeout", 10*time.Second, "deadline of one Docker API call")
	fs.StringVar(&c.metricsListen, "metrics-listen", "", "serve Prometheus /metrics on this address (e.g. 127.0.0.1:9102); off when empty")
	fs.BoolVar(&c.keepSecrets, "keep-secrets", false, "record command lines as they are; by default values of secret-looking arguments (--token=…, --password …, *_KEY=…) are masked")
	fs.StringVar(&c.stateGroup, "state-group", "", "make the state file 0640 and owned by this group, instead of world-readable 0644")
	fs.BoolVar(&c.once, "once", false, "run one cycle, write state and events, and exit")
	fs.BoolVar(&c.dryRun, "dry-run", false, "with --once: print the inventory JSON to stdout and write nothing")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: ds01-detectord [flags]

Scans the containers and GPU processes of this host, rewrites the state file
each cycle and appends transitions to the event log. Runs as a systemd
Type=notify service; SIGHUP forces a rescan.

Examples:
  ds01-detectord --once --dry-run          print what a scan sees, write nothing
  ds01-detectord --once                    one scan, then exit
  ds01-detectord --state-file ./state.json --events-file ./events.jsonl

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case c.dryRun && !c.once:
		return c, usageErr(fs, "--dry-run needs --once")
	case c.interval <= 0:
		return c, usageErr(fs, "--interval must be positive")
	case c.scanTimeout <= 0:
		return c, usageErr(fs, "--scan-timeout must be positive")
	case c.debounce < 0:
		return c, usageErr(fs, "--event-debounce must not be negative")
	case c.dockerTimeout <= 0:
		return c, usageErr(fs, "--docker-timeout must be positive")
	case c.stateFile == "" || c.eventsFile == "":
		return c, usageErr(fs, "--state-file and --events-file must not be empty")
	}
	return c, nil
}

func usageErr(fs *flag.FlagSet, msg string) error {
	fmt.Fprintln(fs.Output(), "ds01-detectord: "+msg)
	fmt.Fprintln(fs.Output(), "Run 'ds01-detectord -h' for usage.")
	return errors.New(msg)
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	if c.showVersion {
		fmt.Fprintln(stdout, "ds01-detectord", version)
		return 0
	}
	log, err := logging.New(c.logFormat, c.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "ds01-detectord:", err)
		return 2
	}
	defer log.Sync()

	docker, err := dockersrc.New(c.dockerHost, c.dockerTimeout)
	if err != nil {
		log.Error("cannot build the Docker client", zap.Error(err))
		return 1
	}
	defer docker.Close()

	var nvmlOpts []nvml.LibraryOption
	if c.nvmlLibrary != "" {
		nvmlOpts = append(nvmlOpts, nvml.WithLibraryPath(c.nvmlLibrary))
	}
	gpus := gpu.New(nvml.New(nvmlOpts...))
	gpus.Log = log
	defer gpus.Close()

	det := detector.New(detector.Config{
		StatePath: c.stateFile, EventsPath: c.eventsFile, DryRun: c.dryRun,
		Docker: docker, GPU: gpus, ExtraExcluded: c.excludeProcesses, KeepSecrets: c.keepSecrets, StateGroup: c.stateGroup, Proc: procfs.New(c.procRoot), Users: userdb.New(5 * time.Minute).Lookup,
		Log: log,
	})

	if c.once {
		ctx, cancel := context.WithTimeout(context.Background(), c.scanTimeout)
		defer cancel()
		sum := det.Cycle(ctx)
		if c.dryRun {
			b, err := statefile.Encode(sum.State)
			if err != nil {
				log.Error("encode inventory", zap.Error(err))
				return 1
			}
			stdout.Write(b)
		}
		log.Info("scan complete", zap.String("summary", sum.StatusLine()), zap.Int("events", sum.Events), zap.Duration("duration", sum.Duration))
		return 0
	}

	var onCycle func(detector.Summary)
	if c.metricsListen != "" {
		m := metrics.New(version)
		m.APIRequests = docker.Requests
		ln, err := m.Listen(c.metricsListen)
		if err != nil {
			log.Error("cannot serve metrics: check --metrics-listen (address taken, or not an address this host has?)",
				zap.String("metrics_listen", c.metricsListen), zap.Error(err))
			return 1
		}
		defer ln.Close()
		log.Info("serving Prometheus metrics", zap.String("address", ln.Addr().String()), zap.String("path", "/metrics"))
		onCycle = m.Observe
	}

	log.Info("ds01-detectord starting", zap.String("version", version),
		zap.String("state_file", c.stateFile), zap.String("events_file", c.eventsFile),
		zap.Duration("interval", c.interval), zap.Duration("scan_timeout", c.scanTimeout))
	// Docker's event stream triggers a debounced scan, so a new container
	// reaches the state file within about a second; the ticker stays as
	// reconciliation.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed, trigger := service.Debounce(c.debounce)
	var from time.Time
	if t := det.Reported().DockerEventsSince; t != nil {
		from = t.Time
	}
	go docker.Watch(ctx, from, changed, log)
	if err := service.Run(ctx, det, log, service.Options{Interval: c.interval, ScanTimeout: c.scanTimeout, Trigger: trigger, OnCycle: onCycle}); err != nil {
		log.Error("stopped with an error", zap.Error(err))
		return 1
	}
	log.Info("ds01-detectord stopped")
	return 0
}
