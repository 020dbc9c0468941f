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
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
	units "github.com/docker/go-units"
	promversion "github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/daemon"
	"github.com/ds01/ds01-detectord/internal/logging"
	"github.com/ds01/ds01-detectord/internal/metrics"
	"github.com/ds01/ds01-detectord/internal/policy"
	"github.com/ds01/ds01-detectord/internal/seal"
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

type config struct {
	stateFile, eventsFile, dockerHost, procRoot string
	nvmlLibrary                                 string
	excludeProcesses                            []string
	logLevel, logFormat                         string
	interval, scanTimeout, dockerTimeout        time.Duration
	debounce, debounceMax                       time.Duration
	webListen                                   []string
	metricsListen                               string
	webConfigFile                               string
	webMaxConns                                 int
	sealKey                                     string
	idleThreshold                               int
	idleAfter                                   time.Duration
	gpuInterval, gpuConfirmAfter                time.Duration
	keepSecrets                                 bool
	policyFile, cgroupRoot                      string
	idleCPU                                     float64
	idleNet                                     string
	idleWindow                                  int
	idleGrace                                   time.Duration
	idle                                        policy.Thresholds
	stateGroup                                  string
	once, dryRun, showVersion                   bool
}

const help = `Scans the containers and GPU processes of this host, rewrites the state file
each cycle and appends transitions to the event log. Runs as a systemd
Type=notify service; SIGHUP forces a rescan and reads --policy again.

Examples:
  ds01-detectord --once --dry-run          print what a scan sees, write nothing
  ds01-detectord --once                    one scan, then exit
  ds01-detectord --state-file ./state.json --events-file ./events.jsonl`

// newApp is the daemon's command line: every flag, one line each, bound to
// c. The --web.* flags are the exporter-toolkit's (kingpinflag), as in every
// Prometheus exporter.
func newApp(c *config, set map[string]*bool, stdout io.Writer) *kingpin.Application {
	app := kingpin.New("ds01-detectord", help)
	app.HelpFlag.Short('h').Help("show this help on standard output (every flag is also in man 8 ds01-detectord)")
	seen := func(name string) *bool { b := new(bool); set[name] = b; return b }
	app.Flag("state-file", "state file (workload inventory) to rewrite each cycle").Default(inventory.DefaultPath).PlaceHolder("FILE").StringVar(&c.stateFile)
	app.Flag("events-file", "JSONL event log to append transitions to").Default(event.DefaultPath).PlaceHolder("FILE").StringVar(&c.eventsFile)
	app.Flag("docker-host", "Docker Engine address (default: $DOCKER_HOST, else unix:///var/run/docker.sock); the daemon must see every container: point it at the Engine, not at a filtering proxy").PlaceHolder("ADDRESS").StringVar(&c.dockerHost)
	app.Flag("docker-timeout", "deadline of one Docker API call").Default("10s").DurationVar(&c.dockerTimeout)
	app.Flag("nvml-library", "path of libnvidia-ml (default: the system's libnvidia-ml.so.1)").PlaceHolder("FILE").StringVar(&c.nvmlLibrary)
	app.Flag("exclude-process", "process name (argv[0] basename) to leave out of host GPU processes, in addition to the Python scanner's system list; hides only processes of system accounts (UID < 1000); repeatable").PlaceHolder("NAME").StringsVar(&c.excludeProcesses)
	app.Flag("proc-root", "procfs root (tests point it at fixture trees)").Default("/proc").PlaceHolder("DIR").StringVar(&c.procRoot)
	app.Flag("log-level", "debug, info, warn or error").Default("info").EnumVar(&c.logLevel, "debug", "info", "warn", "error")
	app.Flag("log-format", "auto (journal under systemd, else console), console, json or journal").Default(logging.FormatAuto).EnumVar(&c.logFormat, logging.FormatAuto, "console", "json", "journal")
	app.Flag("interval", "time between reconciliation scans").Default("30s").DurationVar(&c.interval)
	app.Flag("scan-timeout", "deadline of one scan").Default("25s").DurationVar(&c.scanTimeout)
	app.Flag("event-debounce", "wait this long after a Docker event for more before rescanning").Default("100ms").DurationVar(&c.debounce)
	app.Flag("event-debounce-max", "under continuous Docker events the wait doubles up to this: at most one state write per window").Default("800ms").DurationVar(&c.debounceMax)
	app.Flag("gpu-idle-threshold", "percent SM utilisation below which a workload holding GPU memory counts as idle").Default("5").IntVar(&c.idleThreshold)
	app.Flag("gpu-idle-after", "how long below --gpu-idle-threshold on every GPU it holds makes a workload idle (detection.gpu_idle)").Default("30m").DurationVar(&c.idleAfter)
	app.Flag("gpu-interval", "time between two samples of every GPU's processes and utilisation (GPU time is integrated over them), independent of --interval").Default("1s").DurationVar(&c.gpuInterval)
	app.Flag("gpu-confirm-after", "a host GPU process seen this long is confirmed (detection.host_gpu_process_discovered); shorter ones are logged per user in aggregate").Default("5s").DurationVar(&c.gpuConfirmAfter)
	app.Flag("policy", "the site's resource-limits.yaml: idle thresholds, window, grace and timeouts by group and container type (docs/ARCHITECTURE.md, \"Idle by the site's rule\"); read again on SIGHUP; without it the --idle-* flags apply, with no timeout").PlaceHolder("FILE").StringVar(&c.policyFile)
	app.Flag("idle-cpu-threshold", "without --policy: CPU percent (100 = one core) under which a workload counts as idle").Default("2").Float64Var(&c.idleCPU)
	app.Flag("idle-net-threshold", "without --policy: network bytes per scan interval under which a workload counts as idle (1MiB, 500KiB, 1048576)").Default("1MiB").StringVar(&c.idleNet)
	app.Flag("idle-window", "without --policy: consecutive idle reconciliation scans before the idle verdict").Default("3").IntVar(&c.idleWindow)
	app.Flag("idle-grace", "without --policy: no idle verdict this long after a container starts").Default("30m").DurationVar(&c.idleGrace)
	app.Flag("cgroup-root", "cgroup file system root (tests point it at fixture trees)").Default("/sys/fs/cgroup").PlaceHolder("DIR").StringVar(&c.cgroupRoot)
	app.Flag("keep-secrets", "record command lines as they are; by default values of secret-looking arguments (--token=…, --password …, *_KEY=…) are masked").BoolVar(&c.keepSecrets)
	app.Flag("state-group", "make the state file 0640 and owned by this group, instead of world-readable 0644").PlaceHolder("GROUP").StringVar(&c.stateGroup)
	app.Flag("once", "run one cycle, write state and events, and exit").BoolVar(&c.once)
	app.Flag("dry-run", "with --once: print the inventory JSON to stdout and write nothing").BoolVar(&c.dryRun)
	app.Flag("version", "print the version and exit").BoolVar(&c.showVersion)
	web := kingpinflag.AddFlags(app, metrics.DefaultListenAddress)
	app.GetFlag("web.listen-address").IsSetByUser(seen("web.listen-address")).Help("serve Prometheus /metrics (and a landing page at /) on this address; repeatable; \"\" turns the endpoint off")
	app.GetFlag("web.config.file").PlaceHolder("FILE").Help("exporter-toolkit web configuration file for the metrics endpoint: TLS and basic auth (docs/METRICS.md)")
	if f := app.GetFlag("web.systemd-socket"); f != nil {
		f.Hidden().IsSetByUser(seen("web.systemd-socket"))
	}
	app.Flag("seal-key", "secret key that seals the event lines and the state file (HMAC chain; ds01-workloads verify checks them), created on first start in a directory only root can enter; \"\" seals nothing").Default(seal.DefaultKeyPath).PlaceHolder("FILE").StringVar(&c.sealKey)
	app.Flag("web.max-connections", "most connections the metrics endpoint serves at once, over all its addresses; more are closed as soon as they are accepted (lowered to keep descriptors for the daemon's own files)").Default(strconv.Itoa(metrics.DefaultMaxConnections)).IntVar(&c.webMaxConns)
	app.Flag("metrics-listen", "the older name of --web.listen-address").Hidden().IsSetByUser(seen("metrics-listen")).StringVar(&c.metricsListen)
	app.Flag("help-man-options", "print the man page's OPTIONS (make man) and exit").Hidden().PreAction(func(*kingpin.ParseContext) error {
		manOptions(app, stdout)
		return errHelpShown
	}).Bool()
	for _, f := range app.Model().Flags {
		if !f.IsBoolFlag() {
			app.GetFlag(f.Name).SetValue(named{f.Name, f.Value})
		}
	}
	app.Action(func(*kingpin.ParseContext) error {
		c.webListen = slices.DeleteFunc(slices.Clone(*web.WebListenAddresses), func(s string) bool { return s == "" })
		c.webConfigFile = *web.WebConfigFile
		return nil
	})
	return app
}

// named is a flag's value whose errors name the flag and say what it wants.
type named struct {
	name string
	kingpin.Value
}

func (n named) Set(v string) error {
	err := n.Value.Set(v)
	switch {
	case err == nil:
		return nil
	case strings.Contains(err.Error(), "duration"):
		return fmt.Errorf("--%s %q: want a duration such as 30s, 5m or 1h", n.name, v)
	}
	return fmt.Errorf("--%s %q: %v", n.name, v, err)
}

func (n named) IsCumulative() bool {
	r, ok := n.Value.(interface{ IsCumulative() bool })
	return ok && r.IsCumulative()
}

// manOptions writes the OPTIONS of the man page, in go-md2man's markdown,
// from the flags: they are documented once, here (`make man` puts them into
// docs/man/ds01-detectord.8.md).
func manOptions(app *kingpin.Application, w io.Writer) {
	esc := strings.NewReplacer(`\`, `\\`, "*", `\*`, "_", `\_`, "<", `\<`, ">", `\>`, "`", "\\`")
	for _, f := range app.Model().Flags {
		if f.Hidden || f.Name == "help" {
			continue
		}
		name := "**--" + f.Name + "**"
		if f.Short != 0 {
			name = "**-" + string(f.Short) + "**, " + name
		}
		if !f.IsBoolFlag() {
			ph := f.PlaceHolder
			if ph == "" {
				inner := f.Value
				if n, ok := inner.(named); ok {
					inner = n.Value
				}
				switch t := fmt.Sprintf("%T", inner); {
				case strings.Contains(t, "duration"):
					ph = "DURATION"
				case strings.Contains(t, "int"):
					ph = "N"
				case strings.Contains(t, "enum"):
					ph = "WORD"
				default:
					ph = "VALUE"
				}
			}
			name += " *" + ph + "*"
		}
		help := f.Help
		if len(f.Default) > 0 && f.Default[0] != "" {
			help += " (default " + strings.Join(f.Default, ", ") + ")"
		}
		fmt.Fprintf(w, "%s\n: %s\n\n", name, esc.Replace(help))
	}
}

// errHelpShown ends parsing after a help output.
var errHelpShown = errors.New("help shown")

// errHelp ends the command with exit 0 after --help.
var errHelp = errors.New("help shown")

// parseFlags reads the command line. Help goes to stdout; a bad flag or
// value gives two lines on stderr (the error, where to get help) and an
// error.
func parseFlags(args []string, stdout, stderr io.Writer) (config, error) {
	var c config
	set := map[string]*bool{}
	app := newApp(&c, set, stdout)
	helped := false
	app.UsageWriter(stdout).ErrorWriter(stderr).Terminate(func(int) { helped = true })
	_, err := app.Parse(gnuArgs(app, args))
	if helped || errors.Is(err, errHelpShown) {
		return c, errHelp
	}
	if err != nil {
		return c, usageErr(stderr, err.Error())
	}
	if c.showVersion {
		return c, nil // kingpin sets no defaults with --version
	}
	if *set["web.systemd-socket"] {
		return c, usageErr(stderr, "--web.systemd-socket: the unit is not socket-activated; give --web.listen-address")
	}
	if *set["metrics-listen"] {
		alias := []string{}
		if c.metricsListen != "" {
			alias = []string{c.metricsListen}
		}
		if *set["web.listen-address"] && !slices.Equal(alias, c.webListen) && !(len(alias) == 0 && len(c.webListen) == 0) {
			return c, usageErr(stderr, "--metrics-listen is another name for --web.listen-address: give one of them, or the same address to both")
		}
		c.webListen = alias
	}
	if len(c.webListen) == 0 {
		c.webListen = nil
	}
	switch {
	case c.dryRun && !c.once:
		return c, usageErr(stderr, "--dry-run needs --once")
	case c.interval <= 0:
		return c, usageErr(stderr, "--interval must be positive")
	case c.scanTimeout <= 0:
		return c, usageErr(stderr, "--scan-timeout must be positive")
	case c.debounce < 0:
		return c, usageErr(stderr, "--event-debounce must not be negative")
	case c.debounceMax < c.debounce:
		return c, usageErr(stderr, "--event-debounce-max must not be below --event-debounce")
	case c.dockerTimeout <= 0:
		return c, usageErr(stderr, "--docker-timeout must be positive")
	case c.webMaxConns < 1:
		return c, usageErr(stderr, "--web.max-connections must be at least 1")
	case c.idleThreshold < 1 || c.idleThreshold > 100:
		return c, usageErr(stderr, "--gpu-idle-threshold must be between 1 and 100")
	case c.idleAfter <= 0:
		return c, usageErr(stderr, "--gpu-idle-after must be positive")
	case c.gpuInterval < 10*time.Millisecond:
		return c, usageErr(stderr, "--gpu-interval must be at least 10ms")
	case c.gpuConfirmAfter <= 0:
		return c, usageErr(stderr, "--gpu-confirm-after must be positive")
	case c.idleCPU < 0 || c.idleWindow < 1 || c.idleGrace < 0:
		return c, usageErr(stderr, "--idle-cpu-threshold and --idle-grace must not be negative, --idle-window at least 1")
	case c.stateFile == "" || c.eventsFile == "":
		return c, usageErr(stderr, "--state-file and --events-file must not be empty")
	}
	net, err := units.RAMInBytes(c.idleNet)
	if err != nil || net < 0 {
		return c, usageErr(stderr, fmt.Sprintf("--idle-net-threshold %q: want bytes, as 1MiB or 1048576", c.idleNet))
	}
	c.idle = policy.Thresholds{GPUPercent: float64(c.idleThreshold), CPUPercent: c.idleCPU, NetBytes: float64(net), Window: c.idleWindow, Grace: c.idleGrace}
	return c, nil
}

// gnuArgs turns the single-dash spellings Go's flag package accepted
// (-state-file x, -once) into GNU double dashes, for the flags this command
// has, so that scripts and /etc/default files written for the old parser
// keep working.
func gnuArgs(app *kingpin.Application, args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if app.GetFlag(name) != nil {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}

func usageErr(stderr io.Writer, msg string) error {
	fmt.Fprintln(stderr, "ds01-detectord: error: "+msg)
	fmt.Fprintln(stderr, "Run 'ds01-detectord --help' for usage.")
	return errors.New(msg)
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stdout, stderr)
	if errors.Is(err, errHelp) {
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
		WebListenAddresses: c.webListen, WebConfigFile: c.webConfigFile, WebMaxConnections: c.webMaxConns, SealKey: c.sealKey,
		DryRun: c.dryRun, Version: version, IdleThreshold: c.idleThreshold, IdleAfter: c.idleAfter,
		GPUInterval: c.gpuInterval, GPUConfirmAfter: c.gpuConfirmAfter,
		PolicyFile: c.policyFile, Idle: c.idle, CgroupRoot: c.cgroupRoot,
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
