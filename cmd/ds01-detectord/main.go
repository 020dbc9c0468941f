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
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	units "github.com/docker/go-units"
	promversion "github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/daemon"
	"github.com/ds01/ds01-detectord/internal/logging"
	"github.com/ds01/ds01-detectord/internal/statefile"
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

// config is what the command line sets: the daemon's configuration, which
// the flags bind to field by field, and what only main reads.
type config struct {
	d                   daemon.Config
	excluded            []string // --exclude-process: added to reconcile.DefaultExcluded
	logLevel, logFormat string
	metricsListen       string
	idleNet             string
	once, showVersion   bool
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
	def := daemon.Defaults()
	d := &c.d
	app.Flag("state-file", "state file (workload inventory) to rewrite each cycle").Default(def.Files.StatePath).PlaceHolder("FILE").StringVar(&d.Files.StatePath)
	app.Flag("events-file", "JSONL event log to append transitions to").Default(def.Files.EventsPath).PlaceHolder("FILE").StringVar(&d.Files.EventsPath)
	app.Flag("docker-host", "Docker Engine address (default: $DOCKER_HOST, else unix:///var/run/docker.sock); the daemon must see every container: point it at the Engine, not at a filtering proxy").PlaceHolder("ADDRESS").StringVar(&d.DockerHost)
	app.Flag("docker-timeout", "deadline of one Docker API call").Default(duration(def.DockerTimeout)).DurationVar(&d.DockerTimeout)
	app.Flag("nvml-library", "path of libnvidia-ml (default: the system's libnvidia-ml.so.1)").PlaceHolder("FILE").StringVar(&d.NVMLLibrary)
	app.Flag("exclude-process", "process name (argv[0] basename) to leave out of host GPU processes, in addition to the Python scanner's system list; hides only processes of system accounts (UID < 1000); repeatable").PlaceHolder("NAME").StringsVar(&c.excluded)
	app.Flag("proc-root", "procfs root (tests point it at fixture trees)").Default(def.ProcRoot).PlaceHolder("DIR").StringVar(&d.ProcRoot)
	app.Flag("log-level", "debug, info, warn or error").Default("info").EnumVar(&c.logLevel, "debug", "info", "warn", "error")
	app.Flag("log-format", "auto (journal under systemd, else console), console, json or journal").Default(logging.FormatAuto).EnumVar(&c.logFormat, logging.FormatAuto, "console", "json", "journal")
	app.Flag("interval", "time between reconciliation scans").Default(duration(def.Interval)).DurationVar(&d.Interval)
	app.Flag("scan-timeout", "deadline of one scan").Default(duration(def.ScanTimeout)).DurationVar(&d.ScanTimeout)
	app.Flag("event-debounce", "wait this long after a Docker event for more before rescanning").Default(duration(def.Debounce)).DurationVar(&d.Debounce)
	app.Flag("event-debounce-max", "under continuous Docker events the wait doubles up to this: at most one state write per window").Default(duration(def.DebounceMax)).DurationVar(&d.DebounceMax)
	app.Flag("gpu-idle-threshold", "percent SM utilisation below which a workload holding GPU memory counts as idle").Default(strconv.Itoa(def.Rules.IdleThreshold)).IntVar(&d.Rules.IdleThreshold)
	app.Flag("gpu-idle-after", "how long below --gpu-idle-threshold on every GPU it holds makes a workload idle (detection.gpu_idle)").Default(duration(def.Rules.IdleAfter)).DurationVar(&d.Rules.IdleAfter)
	app.Flag("gpu-interval", "time between two samples of every GPU's processes and utilisation (GPU time is integrated over them), independent of --interval").Default(duration(def.GPUInterval)).DurationVar(&d.GPUInterval)
	app.Flag("gpu-confirm-after", "a host GPU process seen this long is confirmed (detection.host_gpu_process_discovered); shorter ones are logged per user in aggregate").Default(duration(def.Rules.ConfirmAfter)).DurationVar(&d.Rules.ConfirmAfter)
	app.Flag("policy", "the site's resource-limits.yaml: idle thresholds, window, grace and timeouts by group and container type (docs/ARCHITECTURE.md, \"Idle by the site's rule\"); read again on SIGHUP; without it the --idle-* flags apply, with no timeout").PlaceHolder("FILE").StringVar(&d.PolicyFile)
	app.Flag("idle-cpu-threshold", "without --policy: CPU percent (100 = one core) under which a workload counts as idle").Default(strconv.FormatFloat(def.Idle.CPUPercent, 'g', -1, 64)).Float64Var(&d.Idle.CPUPercent)
	app.Flag("idle-net-threshold", "without --policy: network bytes per scan interval under which a workload counts as idle (1MiB, 500KiB, 1048576)").Default(units.BytesSize(def.Idle.NetBytes)).StringVar(&c.idleNet)
	app.Flag("idle-window", "without --policy: consecutive idle reconciliation scans before the idle verdict").Default(strconv.Itoa(def.Idle.Window)).IntVar(&d.Idle.Window)
	app.Flag("idle-grace", "without --policy: no idle verdict this long after a container starts").Default(duration(def.Idle.Grace)).DurationVar(&d.Idle.Grace)
	app.Flag("cgroup-root", "cgroup file system root (tests point it at fixture trees)").Default(def.CgroupRoot).PlaceHolder("DIR").StringVar(&d.CgroupRoot)
	app.Flag("keep-secrets", "record command lines as they are; by default values of secret-looking arguments (--token=…, --password …, *_KEY=…) are masked").BoolVar(&d.Rules.KeepSecrets)
	app.Flag("state-group", "make the state file 0640 and owned by this group, instead of world-readable 0644").PlaceHolder("GROUP").StringVar(&d.Files.StateGroup)
	app.Flag("once", "run one cycle, write state and events, and exit").BoolVar(&c.once)
	app.Flag("dry-run", "with --once: print the inventory JSON to stdout and write nothing").BoolVar(&d.DryRun)
	app.Flag("version", "print the version and exit").BoolVar(&c.showVersion)
	web := kingpinflag.AddFlags(app, def.Web.ListenAddresses[0])
	app.GetFlag("web.listen-address").IsSetByUser(seen("web.listen-address")).Help("serve Prometheus /metrics (and a landing page at /) on this address; repeatable; \"\" turns the endpoint off")
	app.GetFlag("web.config.file").PlaceHolder("FILE").Help("exporter-toolkit web configuration file for the metrics endpoint: TLS and basic auth (docs/METRICS.md)")
	if f := app.GetFlag("web.systemd-socket"); f != nil {
		f.Hidden().IsSetByUser(seen("web.systemd-socket"))
	}
	app.Flag("seal-key", "secret key that seals the event lines and the state file (HMAC chain; ds01-workloads verify checks them), created on first start in a directory only root can enter; \"\" seals nothing").Default(def.SealKey).PlaceHolder("FILE").StringVar(&d.SealKey)
	app.Flag("web.max-connections", "most connections the metrics endpoint serves at once, over all its addresses; more are closed as soon as they are accepted (lowered to keep descriptors for the daemon's own files)").Default(strconv.Itoa(def.Web.MaxConnections)).IntVar(&d.Web.MaxConnections)
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
		d.Web.ListenAddresses = slices.DeleteFunc(slices.Clone(*web.WebListenAddresses), func(s string) bool { return s == "" })
		d.Web.ConfigFile = *web.WebConfigFile
		return nil
	})
	return app
}

// duration is a flag's default as one writes it: 30m, not 30m0s.
func duration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
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
	c := config{d: daemon.Defaults()}
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
	d := &c.d
	if *set["metrics-listen"] {
		alias := []string{}
		if c.metricsListen != "" {
			alias = []string{c.metricsListen}
		}
		if *set["web.listen-address"] && !slices.Equal(alias, d.Web.ListenAddresses) && !(len(alias) == 0 && len(d.Web.ListenAddresses) == 0) {
			return c, usageErr(stderr, "--metrics-listen is another name for --web.listen-address: give one of them, or the same address to both")
		}
		d.Web.ListenAddresses = alias
	}
	if len(d.Web.ListenAddresses) == 0 {
		d.Web.ListenAddresses = nil
	}
	switch {
	case d.DryRun && !c.once:
		return c, usageErr(stderr, "--dry-run needs --once")
	case d.Interval <= 0:
		return c, usageErr(stderr, "--interval must be positive")
	case d.ScanTimeout <= 0:
		return c, usageErr(stderr, "--scan-timeout must be positive")
	case d.Debounce < 0:
		return c, usageErr(stderr, "--event-debounce must not be negative")
	case d.DebounceMax < d.Debounce:
		return c, usageErr(stderr, "--event-debounce-max must not be below --event-debounce")
	case d.DockerTimeout <= 0:
		return c, usageErr(stderr, "--docker-timeout must be positive")
	case d.Web.MaxConnections < 1:
		return c, usageErr(stderr, "--web.max-connections must be at least 1")
	case d.Rules.IdleThreshold < 1 || d.Rules.IdleThreshold > 100:
		return c, usageErr(stderr, "--gpu-idle-threshold must be between 1 and 100")
	case d.Rules.IdleAfter <= 0:
		return c, usageErr(stderr, "--gpu-idle-after must be positive")
	case d.GPUInterval < 10*time.Millisecond:
		return c, usageErr(stderr, "--gpu-interval must be at least 10ms")
	case d.Rules.ConfirmAfter <= 0:
		return c, usageErr(stderr, "--gpu-confirm-after must be positive")
	case d.Idle.CPUPercent < 0 || d.Idle.Window < 1 || d.Idle.Grace < 0:
		return c, usageErr(stderr, "--idle-cpu-threshold and --idle-grace must not be negative, --idle-window at least 1")
	case d.Files.StatePath == "" || d.Files.EventsPath == "":
		return c, usageErr(stderr, "--state-file and --events-file must not be empty")
	}
	net, err := units.RAMInBytes(c.idleNet)
	if err != nil || net < 0 {
		return c, usageErr(stderr, fmt.Sprintf("--idle-net-threshold %q: want bytes, as 1MiB or 1048576", c.idleNet))
	}
	d.Idle.GPUPercent, d.Idle.NetBytes = float64(d.Rules.IdleThreshold), float64(net)
	d.Rules.Excluded = append(slices.Clone(d.Rules.Excluded), c.excluded...)
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

// rescans is fed by SIGHUP until ctx ends. HUPs that come faster than the
// loop takes them coalesce into one rescan.
func rescans(ctx context.Context) <-chan struct{} {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	out := make(chan struct{}, 1)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-hup:
				select {
				case out <- struct{}{}:
				default:
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

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

	c.d.Version = version
	d, err := daemon.New(c.d, log)
	if err != nil {
		log.Error("cannot start", zap.Error(err))
		return 1
	}
	defer d.Close()

	if c.once {
		sum := d.Once(context.Background())
		if c.d.DryRun {
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
		zap.String("state_file", c.d.Files.StatePath), zap.String("events_file", c.d.Files.EventsPath),
		zap.Duration("interval", c.d.Interval), zap.Duration("scan_timeout", c.d.ScanTimeout))
	// SIGTERM and SIGINT end the context: the loop stops after the cycle
	// under way. SIGHUP asks for a rescan.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := d.Run(ctx, rescans(ctx)); err != nil {
		log.Error("stopped with an error", zap.Error(err))
		return 1
	}
	log.Info("ds01-detectord stopped")
	return 0
}
