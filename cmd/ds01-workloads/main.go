// Command ds01-workloads shows what runs on this GPU server, whose it is and
// which GPU it holds, from the state file ds01-detectord writes. It never
// changes anything.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/docker/docker/client"
	"golang.org/x/sys/unix"

	"github.com/ds01/ds01-detectord/internal/report"
	"github.com/ds01/ds01-detectord/internal/view"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

type env struct {
	stdout, stderr io.Writer
	now            func() time.Time
	getenv         func(string) string
	isTTY          bool
	width          int // the terminal's columns; 0 off a terminal
	ctx            context.Context
}

// exitGrace is how long a signal waits for the command to end on its own
// (watch restores the screen) before it ends the process.
const exitGrace = 200 * time.Millisecond

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		// SIGINT or SIGTERM ends ds01-workloads at once, whatever it is
		// doing: the context stops watch and --follow, and what does not
		// end within exitGrace (a slow read, a Docker call) ends here.
		sig := <-sigs
		cancel()
		time.Sleep(exitGrace)
		os.Exit(128 + int(sig.(syscall.Signal)))
	}()
	_, err := unix.IoctlGetTermios(int(os.Stdout.Fd()), unix.TCGETS)
	width := 0
	if ws, err := unix.IoctlGetWinsize(int(os.Stdout.Fd()), unix.TIOCGWINSZ); err == nil {
		width = int(ws.Col)
	}
	os.Exit(run(os.Args[1:], env{stdout: os.Stdout, stderr: os.Stderr, now: time.Now, getenv: os.Getenv, isTTY: err == nil, width: width, ctx: ctx}))
}

const usage = `Usage: ds01-workloads [flags]
       ds01-workloads gpus [flags]            (also: --by-gpu)
       ds01-workloads report [flags]
       ds01-workloads events [flags]
       ds01-workloads verify [flags]
       ds01-workloads completion bash|zsh|fish
       ds01-workloads help concepts
       ds01-workloads --version

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
  ds01-workloads -q --user alice      container IDs only (docker stop $(ds01-workloads -q ...))
  ds01-workloads --format '{{.Name}} {{.User}} {{.GPUMemory}}'
  ds01-workloads --watch 5            redraw when the state changes, and every 5 s
  ds01-workloads report --since 30d   GPU-hours allocated, held and busy per user
  ds01-workloads events --type detection --since 2h
  sudo ds01-workloads verify          check the seals of the event log and the state file

Filters combine with AND and apply to containers and host processes alike.

--format takes a Go template over one row, with these fields:
  .ID .FullID .Type .User .Name .Status .Age .GPUs .Granted .GPUMemory
  .GPUMemoryMB .Util .Idle .IdleSeconds .Image .UserSource .UserConflict
  .HeldSeconds .BusySeconds .AllocatedSeconds
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
	pids                  bool
	sortKey, format       string
	color                 string
	gpu                   optInt
	watch                 watchFlag
	filter                view.Filter
	staleAfter            time.Duration
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

// list runs the default view (and gpus): the flags are parsed into m.
func list(m listMode, e env) int {
	if m.concepts {
		fmt.Fprint(e.stdout, concepts)
		return 0
	}
	switch m.filter.Type {
	case "", inventory.OriginManaged, inventory.OriginDevcontainer, inventory.OriginCompose, inventory.OriginRawDocker, workload.KindHostProcess, workload.KindOtherRuntime:
	default:
		return usageErr(e, "--type %q: want ds01-managed, devcontainer, compose, raw-docker, host-process or other-runtime", m.filter.Type)
	}
	switch m.color {
	case "auto", "always", "never":
	default:
		return usageErr(e, "--color %q: want auto, always or never", m.color)
	}
	if m.sortKey != "" && !view.Sort(nil, m.sortKey) {
		return usageErr(e, "--sort %q: want %s", m.sortKey, strings.Join(view.SortKeys(), ", "))
	}
	if m.gpu.set {
		if m.gpu.n < 0 {
			return usageErr(e, "--gpu must be a GPU index (0 or more)")
		}
		g := m.gpu.n
		m.filter.GPU = &g
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
		if m.json || m.quiet || m.pids || tmpl != nil {
			return usageErr(e, "--watch draws tables; it does not go with --json, -q, --pids or --format")
		}
		return watch(m, e)
	}
	return show(m, tmpl, e, e.stdout)
}

// show prints one view of the state file.
func show(m listMode, tmpl *template.Template, e env, out io.Writer) int {
	st, err := load(m.stateFile)
	if err != nil {
		fmt.Fprintln(e.stderr, "ds01-workloads:", err)
		return 1
	}
	now := e.now()
	if g := m.filter.GPU; g != nil && len(st.GPUs) > 0 && !hasGPU(st, *g) {
		fmt.Fprintf(e.stderr, "ds01-workloads: --gpu %d: this host has no GPU %d (%s)\n", *g, *g, gpuList(st))
		return 1
	}
	rows := m.filter.Apply(view.Rows(st, now))
	if m.sortKey != "" {
		view.Sort(rows, m.sortKey)
	}
	sum := view.Summarize(st, now, m.staleAfter)
	style := view.Style{Color: colorOn(m.color, e)}
	if !m.noTrunc {
		style.Width = e.width
	}
	switch {
	case m.json:
		if err := view.JSON(out, st, rows, sum); err != nil {
			fmt.Fprintln(e.stderr, "ds01-workloads:", err)
			return 1
		}
		return 0
	case m.quiet || m.pids:
		// -q: container IDs only, as docker ps -q, so that
		// docker stop $(ds01-workloads -q) is safe; --pids: the host PIDs.
		for _, w := range rows {
			switch {
			case m.quiet && w.Kind == workload.KindContainer:
				id := w.ID
				if m.noTrunc && w.FullID != "" {
					id = w.FullID
				}
				fmt.Fprintln(out, id)
			case m.pids && w.Kind != workload.KindContainer && w.Pid > 0:
				fmt.Fprintln(out, w.Pid)
			}
		}
		return 0
	case tmpl != nil:
		for _, w := range rows {
			var b strings.Builder
			if err := tmpl.Execute(&b, view.FormatRowOf(w)); err != nil {
				// The row's type keeps the name it had when scripts
				// first saw this message.
				fmt.Fprintln(e.stderr, "ds01-workloads: --format:", err)
				return 2
			}
			fmt.Fprintln(out, b.String())
		}
		return 0
	case m.byGPU:
		view.GPUView(out, st, rows, style)
	default:
		opts := view.Options{Wide: m.wide, ByUser: m.byUser, NoTrunc: m.noTrunc, Style: style}
		if m.stats {
			cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation(), withHost(m.dockerHost))
			if err == nil {
				ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
				_, err = cli.Ping(ctx)
				cancel()
				if err == nil {
					opts.Stats = LiveStats(e.ctx, cli, rows, 10*time.Second)
				}
				cli.Close()
			}
			if err != nil {
				fmt.Fprintln(e.stderr, "ds01-workloads: --stats: Docker is unreachable:", strings.ReplaceAll(err.Error(), "\n", " "))
				return 1
			}
		}
		view.Render(out, rows, opts)
	}
	warn := e.stderr
	if out != e.stdout { // --watch: the warnings belong on the screen
		warn = out
	}
	view.WriteSummary(out, warn, sum, st.LastScan, style)
	return 0
}
func hasGPU(st inventory.State, idx int) bool {
	for _, g := range st.GPUs {
		if g.Index == idx {
			return true
		}
	}
	return false
}

// gpuList says which GPUs the host has: "2 GPUs: 0-1".
func gpuList(st inventory.State) string {
	var idx []int
	for _, g := range st.GPUs {
		idx = append(idx, g.Index)
	}
	slices.Sort(idx)
	parts := make([]string, len(idx))
	for i, n := range idx {
		parts[i] = strconv.Itoa(n)
	}
	list := strings.Join(parts, ", ")
	if len(idx) > 1 && idx[len(idx)-1]-idx[0] == len(idx)-1 {
		list = fmt.Sprintf("%d-%d", idx[0], idx[len(idx)-1])
	}
	return view.Plural(len(idx), "GPU") + ": " + list
}

func withHost(h string) client.Opt {
	return func(c *client.Client) error {
		if h == "" {
			return nil
		}
		return client.WithHost(h)(c)
	}
}

func usageErr(e env, format string, a ...any) int {
	fmt.Fprintf(e.stderr, "ds01-workloads: "+format+"\n", a...)
	fmt.Fprintln(e.stderr, "See 'ds01-workloads --help'.")
	return 2
}

type eventsMode struct {
	file, since, until, typ, user, color string
	follow, json                         bool
	limit                                int
}

func runEvents(o eventsMode, e env) int {
	file, since, until, typ, user, follow, asJSON, limit, color := &o.file, &o.since, &o.until, &o.typ, &o.user, &o.follow, &o.json, &o.limit, &o.color
	now := e.now()
	f := report.EventFilter{TypePrefix: *typ, User: *user}
	var err error
	if *since != "" {
		if f.Since, err = report.ParseTime(*since, now); err != nil {
			return usageErr(e, "--since: %v", err)
		}
	}
	if *until != "" {
		if f.Until, err = report.ParseTime(*until, now); err != nil {
			return usageErr(e, "--until: %v", err)
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		return usageErr(e, "--until %s is before --since %s", *until, *since)
	}
	if *limit < 0 {
		return usageErr(e, "--limit must be 0 or more")
	}
	p := &report.EventPrinter{Out: e.stdout, JSON: *asJSON, Style: view.Style{Color: colorOn(*color, e), Width: e.width}}
	n, off, err := report.ReadEvents(*file, f, *limit, p)
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
	report.Follow(e.ctx, *file, off, f, p, 500*time.Millisecond)
	return 0
}
