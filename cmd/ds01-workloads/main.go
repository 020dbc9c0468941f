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
	"syscall"
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
       ds01-workloads events [flags]
       ds01-workloads help concepts

Shows every workload on this GPU server (containers of every origin, and
processes using a GPU outside containers), who owns it and which GPU it
holds, from the state file that ds01-detectord rewrites every 30 s.

Examples:
  ds01-workloads                      running workloads
  ds01-workloads --all --wide         everything, with IDs, images, GPU access and memory
  ds01-workloads --user alice --gpu-only
  ds01-workloads --type raw-docker    containers started outside the DS01 tooling
  ds01-workloads --by-user            grouped per user, with GPU counts
  ds01-workloads --json | jq '.workloads[] | select(.gpu_memory_mb > 10000)'
  ds01-workloads events --type detection --since 2h
  ds01-workloads events --user alice --since 2026-02-04 --until 2026-02-05 --json
  ds01-workloads events --follow

Filters combine with AND and apply to containers and host processes alike.

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
	filter                workloads.Filter
	staleAfter            time.Duration
}

func run(args []string, e env) int {
	if len(args) > 0 && args[0] == "events" {
		return runEvents(args[1:], e)
	}
	if len(args) > 0 && args[0] == "help" {
		if len(args) == 2 && args[1] == "concepts" {
			fmt.Fprint(e.stdout, concepts)
			return 0
		}
		fmt.Fprint(e.stdout, usage)
		return 0
	}
	var m listMode
	fs := flag.NewFlagSet("ds01-workloads", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.StringVar(&m.stateFile, "state-file", inventory.DefaultPath, "state file to read")
	fs.BoolVar(&m.wide, "wide", false, "more columns: ID, image, GPU access, GPU memory, attribution")
	fs.BoolVar(&m.wide, "w", false, "short for --wide")
	fs.BoolVar(&m.byUser, "by-user", false, "group workloads per user, with workload and GPU counts")
	fs.BoolVar(&m.json, "json", false, "print the filtered inventory as JSON")
	fs.StringVar(&m.filter.User, "user", "", "only this user's workloads")
	fs.StringVar(&m.filter.Type, "type", "", "only this type: ds01-managed, devcontainer, compose, raw-docker, host-process, other-runtime")
	fs.BoolVar(&m.filter.GPUOnly, "gpu-only", false, "only workloads with GPU access or GPU use")
	fs.BoolVar(&m.filter.All, "all", false, "include stopped containers and pending host processes")
	fs.BoolVar(&m.stats, "stats", false, "with --wide: live CPU% and MEM from Docker")
	fs.StringVar(&m.dockerHost, "docker-host", "", "Docker address for --stats (default $DOCKER_HOST or the local socket)")
	fs.DurationVar(&m.staleAfter, "stale-after", 90*time.Second, "warn when the last scan is older than this (three 30 s intervals)")
	fs.BoolVar(&m.concepts, "concepts", false, "explain origins, GPU access, attribution and the two-cycle rule")
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	if rc, ok := parse(fs, args, e); !ok {
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
	if m.stats && !m.wide {
		return usageErr(e, "--stats needs --wide")
	}

	st, err := workloads.Load(m.stateFile)
	if err != nil {
		fmt.Fprintln(e.stderr, "ds01-workloads:", err)
		return 1
	}
	now := e.now()
	rows := m.filter.Apply(workloads.Rows(st, now))
	sum := workloads.Summarize(st, now, m.staleAfter)
	if m.json {
		if err := workloads.JSON(e.stdout, st, rows, sum); err != nil {
			fmt.Fprintln(e.stderr, "ds01-workloads:", err)
			return 1
		}
		return 0
	}
	style := workloads.Style{Color: e.isTTY && e.getenv("NO_COLOR") == ""}
	opts := workloads.Options{Wide: m.wide, ByUser: m.byUser, Style: style}
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
	workloads.Render(e.stdout, rows, opts)
	workloads.WriteSummary(e.stdout, sum, st.LastScan, style)
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

// parse parses args; when it returns false the command ends with rc (0
// after -h, 2 for a usage error).
func parse(fs *flag.FlagSet, args []string, e env) (rc int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		return usageErr(e, "unexpected argument %q", fs.Arg(0)), false
	}
	return 0, true
}

func usageErr(e env, format string, a ...any) int {
	fmt.Fprintf(e.stderr, "ds01-workloads: "+format+"\n", a...)
	fmt.Fprintln(e.stderr, "Run 'ds01-workloads -h' for usage.")
	return 2
}

func runEvents(args []string, e env) int {
	fs := flag.NewFlagSet("ds01-workloads events", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	file := fs.String("events-file", event.DefaultPath, "event log to read")
	since := fs.String("since", "", "only events at or after this time (RFC 3339, 2026-02-04, '2026-02-04 10:30', or 2h/3d ago)")
	until := fs.String("until", "", "only events at or before this time (same forms)")
	typ := fs.String("type", "", "only event types starting with this (e.g. detection, detection.container_)")
	user := fs.String("user", "", "only this user's events")
	follow := fs.Bool("follow", false, "keep printing new events as they are appended")
	asJSON := fs.Bool("json", false, "print events as JSON lines")
	limit := fs.Int("limit", 50, "print only the last N matching events (0: all)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: ds01-workloads events [flags]\n\nReads the event log. Filters combine with AND; times are compared as times.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if rc, ok := parse(fs, args, e); !ok {
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
	p := &workloads.EventPrinter{Out: e.stdout, JSON: *asJSON, Style: workloads.Style{Color: e.isTTY && e.getenv("NO_COLOR") == ""}}
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
