// Package daemon wires ds01-detectord together from its configuration: the
// Docker and GPU sources, the scanner, the metrics endpoint, Docker's event
// stream and the service loop. main and the integration tests both build
// the daemon here, so there is one wiring.
package daemon

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/cycle"
	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/loop"
	"github.com/ds01/ds01-detectord/internal/metrics"
	"github.com/ds01/ds01-detectord/internal/policy"
	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/internal/reconcile/gputime"
	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/internal/source/activity"
	"github.com/ds01/ds01-detectord/internal/source/docker"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/internal/userdb"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Config is the daemon's whole configuration. main binds each flag to one
// field, and the parts go on as they are to the packages that use them:
// Files to the deliver step, Rules to reconcile, the durations to the
// loop. Every default is in Defaults, and nowhere else.
type Config struct {
	// Files are the state file, the event log and the state file's group;
	// New adds the sealing key.
	Files deliver.Config
	// SealKey is the sealing key's path (internal/seal), created on first
	// start; "" seals nothing.
	SealKey       string
	DockerHost    string        // "" : $DOCKER_HOST, else the default socket
	DockerTimeout time.Duration // one Docker API call
	ProcRoot      string
	CgroupRoot    string
	NVMLLibrary   string // "" : the system's libnvidia-ml.so.1
	// Rules are reconcile's: the excluded process names (with
	// reconcile.DefaultExcluded), secrets, the GPU idle rule and the
	// confirmation delay. New sets their Interval and Policy.
	Rules       reconcile.Rules
	Interval    time.Duration // reconciliation scans
	ScanTimeout time.Duration // one scan
	Debounce    time.Duration // wait after a Docker event before scanning
	DebounceMax time.Duration // how far that wait grows under continuous churn
	GPUInterval time.Duration // time between GPU samples
	// Web is the metrics endpoint (no ListenAddresses: none); Run sets
	// its Log.
	Web     metrics.Web
	DryRun  bool // Once only: write nothing
	Version string
	// PolicyFile is the site's resource-limits.yaml ("": none, Idle
	// applies); it is read again on a rescan request (SIGHUP).
	PolicyFile string
	// Idle holds the idle verdict's thresholds without a policy file.
	Idle policy.Thresholds
}

// Defaults is the configuration of a daemon given no flag: main's flags
// take their defaults from it.
func Defaults() Config {
	return Config{
		Files:         deliver.Config{StatePath: inventory.DefaultPath, EventsPath: event.DefaultPath},
		SealKey:       seal.DefaultKeyPath,
		DockerTimeout: 10 * time.Second,
		ProcRoot:      "/proc",
		CgroupRoot:    "/sys/fs/cgroup",
		Rules: reconcile.Rules{Excluded: reconcile.DefaultExcluded, IdleThreshold: gputime.DefaultIdleThreshold,
			IdleAfter: gputime.DefaultIdleAfter, ConfirmAfter: reconcile.DefaultConfirmAfter},
		Interval:    gputime.DefaultInterval,
		ScanTimeout: 25 * time.Second,
		Debounce:    100 * time.Millisecond,
		DebounceMax: 800 * time.Millisecond,
		GPUInterval: time.Second,
		Web:         metrics.Web{ListenAddresses: []string{metrics.DefaultListenAddress}, MaxConnections: metrics.DefaultMaxConnections},
		Idle:        policy.Defaults,
	}
}

// Daemon is one wired daemon. Close releases it.
type Daemon struct {
	cfg     Config
	log     *zap.Logger
	docker  *docker.Source
	gpus    *gpu.Source
	scanner *cycle.Scanner
	lock    *statefile.Lock // nil with DryRun
	policy  *policy.Policy  // the last good one
}

// New builds the daemon: one Docker client and one NVML handle for its
// whole life, and a scanner that has loaded the last state. Unless DryRun,
// it first takes the state file's lock (one daemon per state file: a
// *statefile.HeldError names the holder) and refuses a state file a newer
// version wrote (inventory.ErrNewerSchema), leaving it untouched.
func New(cfg Config, log *zap.Logger) (*Daemon, error) {
	if log == nil {
		log = zap.NewNop()
	}
	var lock *statefile.Lock
	if !cfg.DryRun {
		var err error
		if lock, err = statefile.TakeLock(cfg.Files.StatePath); err != nil {
			return nil, err
		}
		if err := statefile.CheckSchema(cfg.Files.StatePath); err != nil {
			lock.Release()
			return nil, err
		}
	}
	if cfg.SealKey != "" && !cfg.DryRun {
		var err error
		if cfg.Files.Key, cfg.Files.KeyCreated, err = seal.LoadOrCreateKey(cfg.SealKey); err != nil {
			lock.Release()
			return nil, fmt.Errorf("sealing key: %w", err)
		}
		if cfg.Files.KeyCreated {
			log.Info("sealing key created", zap.String("path", cfg.SealKey))
		}
	}
	dk, err := docker.New(cfg.DockerHost, cfg.DockerTimeout)
	if err != nil {
		lock.Release()
		return nil, fmt.Errorf("cannot build the Docker client: %w", err)
	}
	var opts []nvml.LibraryOption
	if cfg.NVMLLibrary != "" {
		opts = append(opts, nvml.WithLibraryPath(cfg.NVMLLibrary))
	}
	gpus := gpu.New(nvml.New(opts...), log)
	d := &Daemon{cfg: cfg, log: log, docker: dk, gpus: gpus, lock: lock}
	pol := d.loadPolicy(nil)
	if cfg.PolicyFile != "" && pol.Source() != "flags" {
		d.policy = pol
	}
	rules := cfg.Rules
	rules.Interval, rules.Policy = cfg.Interval, pol
	d.scanner = cycle.New(cycle.Config{
		Files: cfg.Files, DryRun: cfg.DryRun, Rules: rules,
		Docker: dk, GPU: gpus, Proc: proc.New(cfg.ProcRoot), Users: userdb.New(5 * time.Minute).Lookup,
		Activity: activity.New(cfg.ProcRoot, cfg.CgroupRoot),
	}, log)
	return d, nil
}

// loadPolicy reads the policy file. On failure it logs one error and
// returns last (the last good policy), or, at start, the flags' rule.
func (d *Daemon) loadPolicy(last *policy.Policy) *policy.Policy {
	th := d.cfg.Idle
	if d.cfg.PolicyFile == "" {
		return policy.FromFlags(th)
	}
	p, warnings, err := policy.Load(d.cfg.PolicyFile)
	for _, w := range warnings {
		d.log.Warn("policy: "+w, zap.String("policy_file", d.cfg.PolicyFile))
	}
	switch {
	case err != nil && last != nil:
		d.log.Error("policy file not loaded; keeping the last good policy", zap.String("policy_file", d.cfg.PolicyFile), zap.Error(err))
		return last
	case err != nil:
		d.log.Error("policy file not loaded; the idle thresholds of the flags apply, with no timeout, until it loads (SIGHUP)",
			zap.String("policy_file", d.cfg.PolicyFile), zap.Error(err))
		return policy.FromFlags(th)
	}
	d.log.Info("policy loaded", zap.String("policy_file", d.cfg.PolicyFile))
	return p
}

// reload reads the policy file again (a rescan request: SIGHUP).
func (d *Daemon) reload() {
	if d.cfg.PolicyFile == "" {
		return
	}
	d.policy = d.loadPolicy(d.policy)
	d.scanner.SetPolicy(d.policy)
}

// Close releases the Docker client, the NVML handle and the state file's
// lock.
func (d *Daemon) Close() {
	d.gpus.Close()
	d.docker.Close()
	d.lock.Release()
}

// Once runs one scan under the scan deadline (--once).
func (d *Daemon) Once(ctx context.Context) summary.Summary {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ScanTimeout)
	defer cancel()
	return d.scanner.Scan(ctx, true)
}

// lean keeps a reconciliation scan's memory from staying resident once the
// scan is over. The daemon idles between scans, and a full scan allocates
// the most (the list, the activity of every running container, a new
// state): left to the garbage collector's pace, that headroom stays
// resident (a few MB at 1,000 containers, more than a third of the
// daemon's memory). During the scan the collector runs at GOGC=25 rather
// than 100, so that the state it keeps lands among fewer pages, and after
// it the free pages go back to the operating system. At 1,000 containers
// that took the daemon at rest from 30.9-31.1 MB to 29.5-29.9 MB for about
// 8 % more CPU per full scan (docs/PERFORMANCE.md). Event scans, which
// allocate little and may come several a second, are left alone.
type lean struct{ sc *cycle.Scanner }

// fullScanGOGC is the garbage collector's GOGC during a full scan.
const fullScanGOGC = 25

func (l lean) Scan(ctx context.Context, full bool) summary.Summary {
	if !full {
		return l.sc.Scan(ctx, false)
	}
	defer debug.SetGCPercent(debug.SetGCPercent(fullScanGOGC))
	sum := l.sc.Scan(ctx, true)
	debug.FreeOSMemory()
	return sum
}

// Run serves until ctx ends (main: SIGTERM or SIGINT): the metrics
// endpoint when configured, Docker's event stream (which triggers
// debounced scans), and the service loop with its reconciliation ticker.
// Each value on rescan (main: SIGHUP) reloads the policy file and asks for
// a full scan. A metrics address that cannot be bound, or a web
// configuration that does not load, is an error before anything starts.
func (d *Daemon) Run(ctx context.Context, rescan <-chan struct{}) error {
	var onCycle func(summary.Summary)
	if web := d.cfg.Web; len(web.ListenAddresses) > 0 {
		m := metrics.New(d.cfg.Version)
		m.APIRequests = d.docker.Requests
		lns, err := m.Listen(web, d.log)
		if err != nil {
			return fmt.Errorf("cannot serve metrics on %s (address taken, not an address this host has, or a bad --web.config.file?): %w",
				strings.Join(web.ListenAddresses, ", "), err)
		}
		defer func() {
			for _, ln := range lns {
				ln.Close()
			}
		}()
		d.log.Info("serving Prometheus metrics", zap.String("address", metrics.Addresses(lns)), zap.String("path", "/metrics"),
			zap.Bool("web_config", web.ConfigFile != ""))
		if exposed := metrics.Exposed(lns); len(exposed) > 0 && web.ConfigFile == "" {
			d.log.Warn("the metrics endpoint is reachable from other hosts or containers without TLS or authentication, and its labels name users, containers and images; give --web.config.file, or listen on 127.0.0.1",
				zap.Strings("exposed_addresses", exposed))
		}
		onCycle = m.Observe
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A new container reaches the state file within about a second of its
	// event; the ticker stays as reconciliation. The stream resumes from
	// the last run's checkpoint, so what happened while the daemon was
	// down is replayed.
	changed, trigger := loop.Debounce(d.cfg.Debounce, d.cfg.DebounceMax)
	var from time.Time
	if t := d.scanner.Reported().DockerEventsSince; t != nil {
		from = t.Time
	}
	go d.docker.Watch(ctx, from, changed, d.log)
	// The GPU sampler runs on its own clock; a change in the set of GPU
	// processes asks for a scan the way a Docker event does.
	if smp := d.scanner.Sampler(); smp != nil {
		every := d.cfg.GPUInterval
		go smp.Run(ctx, every, min(d.cfg.ScanTimeout, 5*every+time.Second), changed)
	}
	return loop.Run(ctx, lean{d.scanner}, d.log, loop.Options{Interval: d.cfg.Interval, ScanTimeout: d.cfg.ScanTimeout,
		Trigger: trigger, Rescan: rescan, OnCycle: onCycle, OnRescan: d.reload})
}
