// Command ds01-detectord is the awareness layer of a shared GPU server. It
// scans Docker, NVML and /proc, writes the workload inventory to a state
// file and appends every transition to the shared event log.
//
// A scan, from here to the state file: main parses the flags and builds the
// daemon (internal/daemon), whose loop (internal/loop) calls
// cycle.Scanner.Scan. A scan gathers facts from the sources
// (internal/source/...), reconciles them with the last state
// (internal/reconcile) and delivers the result: the state file, then the
// event log (internal/deliver).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	promversion "github.com/prometheus/common/version"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/daemon"
	"github.com/ds01/ds01-detectord/internal/logging"
	"github.com/ds01/ds01-detectord/internal/metrics"
	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// version is set by the Makefile with -ldflags, as are
// prometheus/common/version's Version, Revision, Branch and BuildDate
// (ds01_detector_build_info); a build without them reads that Version.
var version = "dev"

func init() {
	if version == "dev" && promversion.Version != "" {
		version = promversion.Version
	}
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// addrFlag is a repeatable address flag with a default that the first
// explicit value replaces; "" alone turns the endpoint off.
type addrFlag struct {
	addrs []string
	set   bool
}

func (a *addrFlag) String() string {
	if a == nil {
		return ""
	}
	return strings.Join(a.addrs, ",")
}

func (a *addrFlag) Set(v string) error {
	if !a.set {
		a.addrs, a.set = nil, true
	}
	if v != "" {
		a.addrs = append(a.addrs, v)
	}
	return nil
}

type config struct {
	stateFile, eventsFile, dockerHost, procRoot string
	nvmlLibrary                                 string
	excludeProcesses                            listFlag
	logLevel, logFormat                         string
	interval, scanTimeout, dockerTimeout        time.Duration
	debounce, debounceMax                       time.Duration
	webListen                                   addrFlag
	metricsListen                               string
	webConfigFile                               string
	webMaxConns                                 int
	idleThreshold                               int
	idleAfter                                   time.Duration
	gpuInterval, gpuConfirmAfter                time.Duration
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
	fs.Var(&c.excludeProcesses, "exclude-process", "process name (argv[0] basename) to leave out of host GPU processes, in addition to the Python scanner's system list; hides only processes of system accounts (UID < 1000); repeatable")
	fs.StringVar(&c.procRoot, "proc-root", "/proc", "procfs root (tests point it at fixture trees)")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", logging.FormatAuto, "auto (journal under systemd, else console), console, json or journal")
	fs.DurationVar(&c.interval, "interval", 30*time.Second, "time between reconciliation scans")
	fs.DurationVar(&c.scanTimeout, "scan-timeout", 25*time.Second, "deadline of one scan")
	fs.DurationVar(&c.debounce, "event-debounce", 100*time.Millisecond, "wait this long after a Docker event for more before rescanning")
	fs.DurationVar(&c.debounceMax, "event-debounce-max", 800*time.Millisecond, "under continuous Docker events the wait doubles up to this: at most one state write per window")
	fs.DurationVar(&c.dockerTimeout, "docker-timeout", 10*time.Second, "deadline of one Docker API call")
	c.webListen.addrs = []string{metrics.DefaultListenAddress}
	fs.Var(&c.webListen, "web.listen-address", "serve Prometheus /metrics (and a landing page at /) on this `address`; repeatable; \"\" turns the endpoint off")
	fs.StringVar(&c.metricsListen, "metrics-listen", "", "the same as --web.listen-address (its older name), one `address`")
	fs.StringVar(&c.webConfigFile, "web.config.file", "", "exporter-toolkit web configuration `file` for the metrics endpoint: TLS and basic auth (README, \"Prometheus metrics\")")
	fs.IntVar(&c.webMaxConns, "web.max-connections", metrics.DefaultMaxConnections, "most connections the metrics endpoint serves at once, over all its addresses; more are closed as soon as they are accepted (lowered to keep descriptors for the daemon's own files)")
	fs.IntVar(&c.idleThreshold, "gpu-idle-threshold", 5, "percent SM utilisation below which a workload holding GPU memory counts as idle")
	fs.DurationVar(&c.idleAfter, "gpu-idle-after", 30*time.Minute, "how long below --gpu-idle-threshold on every GPU it holds makes a workload idle (detection.gpu_idle)")
	fs.DurationVar(&c.gpuInterval, "gpu-interval", time.Second, "time between two samples of every GPU's processes and utilisation (GPU time is integrated over them), independent of --interval")
	fs.DurationVar(&c.gpuConfirmAfter, "gpu-confirm-after", 5*time.Second, "a host GPU process seen this long is confirmed (detection.host_gpu_process_discovered); shorter ones are logged per user in aggregate")
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
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["metrics-listen"] {
		alias := []string{}
		if c.metricsListen != "" {
			alias = []string{c.metricsListen}
		}
		if set["web.listen-address"] && !slices.Equal(alias, c.webListen.addrs) {
			return c, usageErr(fs, "--metrics-listen is another name for --web.listen-address: give one of them, or the same address to both")
		}
		c.webListen.addrs = alias
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
	case c.debounceMax < c.debounce:
		return c, usageErr(fs, "--event-debounce-max must not be below --event-debounce")
	case c.webMaxConns < 1:
		return c, usageErr(fs, "--web.max-connections must be at least 1")
	case c.dockerTimeout <= 0:
		return c, usageErr(fs, "--docker-timeout must be positive")
	case c.idleThreshold < 1 || c.idleThreshold > 100:
		return c, usageErr(fs, "--gpu-idle-threshold must be between 1 and 100")
	case c.idleAfter <= 0:
		return c, usageErr(fs, "--gpu-idle-after must be positive")
	case c.gpuInterval < 10*time.Millisecond:
		return c, usageErr(fs, "--gpu-interval must be at least 10ms")
	case c.gpuConfirmAfter <= 0:
		return c, usageErr(fs, "--gpu-confirm-after must be positive")
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

	d, err := daemon.New(daemon.Config{
		StateFile: c.stateFile, EventsFile: c.eventsFile, StateGroup: c.stateGroup,
		DockerHost: c.dockerHost, DockerTimeout: c.dockerTimeout, ProcRoot: c.procRoot, NVMLLibrary: c.nvmlLibrary,
		ExcludeProcesses: c.excludeProcesses, KeepSecrets: c.keepSecrets,
		Interval: c.interval, ScanTimeout: c.scanTimeout, Debounce: c.debounce, DebounceMax: c.debounceMax,
		WebListenAddresses: c.webListen.addrs, WebConfigFile: c.webConfigFile, WebMaxConnections: c.webMaxConns,
		DryRun: c.dryRun, Version: version, IdleThreshold: c.idleThreshold, IdleAfter: c.idleAfter,
		GPUInterval: c.gpuInterval, GPUConfirmAfter: c.gpuConfirmAfter,
	}, log)
	if err != nil {
		log.Error("cannot start", zap.Error(err))
		return 1
	}
	defer d.Close()

	if c.once {
		sum := d.Once(context.Background())
		if c.dryRun {
			b, err := statefile.Encode(sum.State)
			if err != nil {
				log.Error("encode inventory", zap.Error(err))
				return 1
			}
			stdout.Write(b)
		}
		log.Info("scan complete", zap.String("summary", sum.StatusLine()), zap.Int("events", sum.Events), zap.Duration("duration", sum.Duration))
		if sum.StateWriteErr != nil || sum.EventAppendErr != nil {
			return 1 // the error was logged by the write that failed
		}
		return 0
	}

	log.Info("ds01-detectord starting", zap.String("version", version), zap.String("revision", promversion.GetRevision()),
		zap.String("build_date", promversion.BuildDate),
		zap.String("state_file", c.stateFile), zap.String("events_file", c.eventsFile),
		zap.Duration("interval", c.interval), zap.Duration("scan_timeout", c.scanTimeout))
	if err := d.Run(context.Background()); err != nil {
		log.Error("stopped with an error", zap.Error(err))
		return 1
	}
	log.Info("ds01-detectord stopped")
	return 0
}
