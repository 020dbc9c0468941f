// Command ds01-workloads shows what runs on this GPU server, whose it is and
// which GPU it holds, from the state file ds01-detectord writes. It never
// changes anything.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/docker/docker/client"
	"golang.org/x/sys/unix"

	"github.com/ds01/ds01-detectord/internal/workloads"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

type env struct {
	stdout, stderr io.Writer
	now            func() time.Time
	getenv         func(string) string
	isTTY          bool
	ctx            context.Context
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	_, err := unix.IoctlGetTermios(int(os.Stdout.Fd()), unix.TCGETS)
	os.Exit(run(os.Args[1:], env{stdout: os.Stdout, stderr: os.Stderr, now: time.Now, getenv: os.Getenv, isTTY: err == nil, ctx: ctx}))
}

const usage = `Usage: ds01-workloads [flags]
       ds01-workloads gpus [flags]            (also: --by-gpu)
       ds01-workloads report [flags]
       ds01-workloads events [flags]
       ds01-workloads completion bash|zsh
       ds01-workloads help concepts

Shows every workload on this GPU server (containers of every origin, and
processes using a GPU outside containers), who owns it, which GPUs it holds
and whether it uses them, from the state file that ds01-detectord rewrites
every 30 s.

Columns: GPUS are the GPUs in use (index; 3/gi1 for a MIG instance), with
the grant in brackets where it differs; MEM is GPU memory (MiB/GiB); UTIL is
SM utilisation; IDLE shows how long it has held GPU memory below the idle
threshold. "-" is unknown or none, never 0.

Examples:
  ds01-workloads                      running workloads
  ds01-workloads gpus                 one block per GPU: who holds it, how busy
  ds01-workloads --idle --sort idle   idle GPU holders, longest first
  ds01-workloads --gpu 3              who is on GPU 3
  ds01-workloads --all --wide         everything, with IDs, images, GPU access, attribution
  ds01-workloads -q --user alice      IDs only (container IDs, PIDs)
  ds01-workloads --format '{{.Name}} {{.User}} {{.GPUMemory}}'
  ds01-workloads --watch 5s           redraw when the state changes
  ds01-workloads report --since 30d   GPU-hours allocated, held and busy per user
  ds01-workloads events --type detection --since 2h

Filters combine with AND and apply to containers and host processes alike.

--format takes a Go template over one row, with these fields:
  .ID .FullID .Type .User .Name .Status .Age .GPUs .Granted .GPUMemory
  .GPUMemoryMB .Util .Idle .IdleSeconds .Image .UserSource .UserConflict
  .HeldSeconds .BusySeconds .AllocatedSeconds

Flags:
`

const concepts = `Concepts

Origins (TYPE), first match wins:
  ds01-managed   label ds01.managed="true": made by the DS01 tooling
  devcontainer   a devcontainer.* label, or a name starting vsc- (VS Code)
  compose        label com.docker.compose.project (docker compose)
  raw-docker     anything else: plain docker run, or the API
  host-process   a process using a GPU outside any container
  other-runtime  a GPU process in a podman, containerd or CRI-O container

GPU access mechanisms (ACCESS in --wide), any of which grants a GPU:
  device-request  --gpus (a device request for the nvidia driver or the gpu capability)
  nvidia-runtime  the nvidia runtime with NVIDIA_VISIBLE_DEVICES set (not void/none/"")
  cdi             a CDI device nvidia.com/gpu=…
  device-node     a host device /dev/nvidia*
  privileged      --privileged sees every device
A container flagged [gpu-without-access] uses a GPU although none of these
grants it; [outside-gpu-devices] runs on a GPU outside its allocation.

Attribution (USER-FROM in --wide), first signal wins:
  label:ds01.user, label:aime.mlc.USER, a /home/<user> path in
  label:devcontainer.local_folder or label:com.docker.compose.project.working_dir,
  a bind mount under /home/<user> (bind-mount), a name <x>._.<uid> (name-uid),
  a non-root owner of the container's init process (process-owner), else
  "unknown". A container whose init runs as root is not attributed to root.

The two-cycle rule: a host GPU process is listed as pending when first seen,
and confirmed (and reported) when the next scan sees it again, so that
short-lived probes such as nvidia-smi do not flood the event log. Its age
counts from the first sighting. --all shows pending processes too.
`

type listMode struct {
	stateFile, dockerHost string
	wide, byUser, json    bool
	stats, concepts       bool
	byGPU, quiet, noTrunc bool
	sortKey, format       string
	color                 string
	gpu                   int
	watch                 watchFlag
	filter                workloads.Filter
	staleAfter            time.Duration
}

// watchFlag is --watch, with an optional interval: --watch, --watch=5s or
// --watch 5s.
type watchFlag struct {
	on    bool
	every time.Duration
}

func (w *watchFlag) String() string   { return "" }
func (w *watchFlag) IsBoolFlag() bool { return true }
func (w *watchFlag) Set(v string) error {
	if b, err := strconv.ParseBool(v); err == nil {
		w.on = b
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return fmt.Errorf("want a duration such as 2s")
	}
	w.on, w.every = true, d
	return nil
}

// joinWatch turns "--watch 5s" into "--watch=5s".
func joinWatch(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if (a == "--watch" || a == "-watch") && i+1 < len(args) {
			if d, err := time.ParseDuration(args[i+1]); err == nil && d > 0 {
				out = append(out, a+"="+args[i+1])
				i++
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// colorOn decides colour: --color always/never, else only on a terminal,
// never with TERM=dumb or NO_COLOR set.
func colorOn(mode string, e env) bool {
	switch mode {
	case "always":
		return true
	case "never":
		return false
	}
	return e.isTTY && e.getenv("NO_COLOR") == "" && e.getenv("TERM") != "dumb"
}

func run(args []string, e env) int {
	if len(args) > 0 {
		switch args[0] {
		case "events":
			return runEvents(args[1:], e)
		case "report":
			return runReport(args[1:], e)
		case "completion":
			return runCompletion(args[1:], e)
		case "gpus":
			args = append([]string{"--by-gpu"}, args[1:]...)
		case "help":
			if len(args) == 2 && args[1] == "concepts" {
				fmt.Fprint(e.stdout, concepts)
				return 0
			}
			fmt.Fprint(e.stdout, usage)
			return 0
		}
	}
	m := listMode{gpu: -1}
	fs := flag.NewFlagSet("ds01-workloads", flag.ContinueOnError)
	fs.StringVar(&m.stateFile, "state-file", inventory.DefaultPath, "state file to read")
	fs.BoolVar(&m.wide, "wide", false, "more columns: ID, image, GPU access, attribution, owner conflict")
	fs.BoolVar(&m.wide, "w", false, "short for --wide")
	fs.BoolVar(&m.byUser, "by-user", false, "group workloads per user, with workload and GPU counts")
	fs.BoolVar(&m.byGPU, "by-gpu", false, "one block per GPU (same as the gpus command)")
	fs.BoolVar(&m.json, "json", false, "print the filtered inventory as JSON")
	fs.StringVar(&m.filter.User, "user", "", "only this user's workloads")
	fs.StringVar(&m.filter.Type, "type", "", "only this type: ds01-managed, devcontainer, compose, raw-docker, host-process, other-runtime")
	fs.BoolVar(&m.filter.GPUOnly, "gpu-only", false, "only workloads with GPU access or GPU use")
	fs.BoolVar(&m.filter.All, "all", false, "include stopped containers and pending host processes")
	fs.BoolVar(&m.filter.Idle, "idle", false, "only workloads holding GPU memory below the idle threshold")
	fs.IntVar(&m.gpu, "gpu", -1, "only workloads with processes on GPU `N` (index)")
	fs.StringVar(&m.sortKey, "sort", "", "sort by mem, util, idle, age (largest first), user or name")
	fs.BoolVar(&m.quiet, "q", false, "print only IDs: container IDs, PIDs for processes")
	fs.StringVar(&m.format, "format", "", "print each row with this Go `template` (fields listed above)")
	fs.BoolVar(&m.noTrunc, "no-trunc", false, "do not cut long cells; full container IDs")
	fs.Var(&m.watch, "watch", "redraw whenever the state file changes (and every `interval`, default 2s); Ctrl-C ends")
	fs.StringVar(&m.color, "color", "auto", "colour: auto (a terminal, not TERM=dumb or NO_COLOR), always or never")
	fs.BoolVar(&m.stats, "stats", false, "with --wide: live CPU% and MEM from Docker")
	fs.StringVar(&m.dockerHost, "docker-host", "", "Docker address for --stats (default $DOCKER_HOST or the local socket)")
	fs.DurationVar(&m.staleAfter, "stale-after", 90*time.Second, "warn when the last scan is older than this (three 30 s intervals)")
	fs.BoolVar(&m.concepts, "concepts", false, "explain origins, GPU access, attribution and the two-cycle rule")
	if rc, ok := parse(fs, joinWatch(args), e, usage); !ok {
		return rc
	}
	if m.concepts {
		fmt.Fprint(e.stdout, concepts)
		return 0
	}
	switch m.filter.Type {
	case "", inventory.OriginManaged, inventory.OriginDevcontainer, inventory.OriginCompose, inventory.OriginRawDocker, workloads.KindHostProcess, workloads.KindOtherRuntime:
	default:
		return usageErr(e, "--type %q: want ds01-managed, devcontainer, compose, raw-docker, host-process or other-runtime", m.filter.Type)
	}
	switch m.color {
	case "auto", "always", "never":
	default:
		return usageErr(e, "--color %q: want auto, always or never", m.color)
	}
	if m.sortKey != "" && !workloads.Sort(nil, m.sortKey) {
		return usageErr(e, "--sort %q: want %s", m.sortKey, strings.Join(workloads.SortKeys(), ", "))
	}
	if m.gpu >= 0 {
		g := m.gpu
		m.filter.GPU = &g
	} else if m.gpu != -1 {
		return usageErr(e, "--gpu must be a GPU index (0 or more)")
	}
	if m.stats && !m.wide {
		return usageErr(e, "--stats needs --wide")
	}
	var tmpl *template.Template
	if m.format != "" {
		var err error
		if tmpl, err = template.New("format").Parse(m.format); err != nil {
			return usageErr(e, "--format: %v", err)
		}
	}
	if m.watch.on {
		if m.json || m.quiet || tmpl != nil {
			return usageErr(e, "--watch draws tables; it does not go with --json, -q or --format")
		}
		return watch(m, e)
	}
	return show(m, tmpl, e, e.stdout)
}

// show prints one view of the state file.
func show(m listMode, tmpl *template.Template, e env, out io.Writer) int {
	st, err := workloads.Load(m.stateFile)
	if err != nil {
		fmt.Fprintln(e.stderr, "ds01-workloads:", err)
		return 1
	}
	now := e.now()
	rows := m.filter.Apply(workloads.Rows(st, now))
	if m.sortKey != "" {
		workloads.Sort(rows, m.sortKey)
	}
	sum := workloads.Summarize(st, now, m.staleAfter)
	style := workloads.Style{Color: colorOn(m.color, e)}
	switch {
	case m.json:
		if err := workloads.JSON(out, st, rows, sum); err != nil {
			fmt.Fprintln(e.stderr, "ds01-workloads:", err)
			return 1
		}
		return 0
	case m.quiet:
		for _, w := range rows {
			id := w.ID
			if w.Kind != workloads.KindContainer {
				id = strconv.Itoa(w.Pid)
			} else if m.noTrunc && w.FullID != "" {
				id = w.FullID
			}
			fmt.Fprintln(out, id)
		}
		return 0
	case tmpl != nil:
		for _, w := range rows {
			var b strings.Builder
			if err := tmpl.Execute(&b, workloads.FormatRowOf(w)); err != nil {
				fmt.Fprintln(e.stderr, "ds01-workloads: --format:", err)
				return 2
			}
			fmt.Fprintln(out, b.String())
		}
		return 0
	case m.byGPU:
		workloads.GPUView(out, st, rows, style)
	default:
		opts := workloads.Options{Wide: m.wide, ByUser: m.byUser, NoTrunc: m.noTrunc, Style: style}
		if m.stats {
			cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation(), withHost(m.dockerHost))
			if err == nil {
				opts.Stats = workloads.LiveStats(e.ctx, cli, rows, 10*time.Second)
				cli.Close()
			} else {
				fmt.Fprintln(e.stderr, "ds01-workloads: --stats:", err)
				opts.Stats = map[string]workloads.Stats{}
			}
		}
		workloads.Render(out, rows, opts)
	}
	warn := e.stderr
	if out != e.stdout { // --watch: the warnings belong on the screen
		warn = out
	}
	workloads.WriteSummary(out, warn, sum, st.LastScan, style)
	return 0
}
func withHost(h string) client.Opt {
	return func(c *client.Client) error {
		if h == "" {
			return nil
		}
		return client.WithHost(h)(c)
	}
}

// parse parses args; when it returns false the command ends with rc:
// after -h/--help the usage and the flags go to stdout and rc is 0; a bad
// flag gives two lines on stderr and rc 2.
func parse(fs *flag.FlagSet, args []string, e env, text string) (rc int, ok bool) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(e.stdout, text)
			fs.SetOutput(e.stdout)
			fs.PrintDefaults()
			return 0, false
		}
		return usageErr(e, "%v", err), false
	}
	if fs.NArg() > 0 {
		return usageErr(e, "unexpected argument %q", fs.Arg(0)), false
	}
	return 0, true
}

func usageErr(e env, format string, a ...any) int {
	fmt.Fprintf(e.stderr, "ds01-workloads: "+format+"\n", a...)
	fmt.Fprintln(e.stderr, "See 'ds01-workloads --help'.")
	return 2
}

func runEvents(args []string, e env) int {
	fs := flag.NewFlagSet("ds01-workloads events", flag.ContinueOnError)
	file := fs.String("events-file", event.DefaultPath, "event log to read")
	since := fs.String("since", "", "only events at or after this time (RFC 3339, 2026-02-04, '2026-02-04 10:30', or 2h/3d ago)")
	until := fs.String("until", "", "only events at or before this time (same forms)")
	typ := fs.String("type", "", "only event types starting with this (e.g. detection, detection.container_)")
	user := fs.String("user", "", "only this user's events")
	follow := fs.Bool("follow", false, "keep printing new events as they are appended")
	asJSON := fs.Bool("json", false, "print events as JSON lines")
	limit := fs.Int("limit", 50, "print only the last N matching events (0: all)")
	color := fs.String("color", "auto", "colour: auto, always or never")
	if rc, ok := parse(fs, args, e, "Usage: ds01-workloads events [flags]\n\nReads the event log. Filters combine with AND; times are compared as times.\n\nFlags:\n"); !ok {
		return rc
	}
	now := e.now()
	f := workloads.EventFilter{TypePrefix: *typ, User: *user}
	var err error
	if *since != "" {
		if f.Since, err = workloads.ParseTime(*since, now); err != nil {
			return usageErr(e, "--since: %v", err)
		}
	}
	if *until != "" {
		if f.Until, err = workloads.ParseTime(*until, now); err != nil {
			return usageErr(e, "--until: %v", err)
		}
	}
	if *limit < 0 {
		return usageErr(e, "--limit must be 0 or more")
	}
	p := &workloads.EventPrinter{Out: e.stdout, JSON: *asJSON, Style: workloads.Style{Color: colorOn(*color, e)}}
	n, off, err := workloads.ReadEvents(*file, f, *limit, p)
	if err != nil && !(*follow && os.IsNotExist(err)) {
		fmt.Fprintf(e.stderr, "ds01-workloads: cannot read event log %s: %v (check that it exists and is readable; the detector appends to it)\n", *file, err)
		return 1
	}
	if !*follow {
		if n == 0 && !*asJSON {
			fmt.Fprintln(e.stdout, "No events found")
		}
		return 0
	}
	workloads.Follow(e.ctx, *file, off, f, p, 500*time.Millisecond)
	return 0
}
