package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/internal/view"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// version is set by the Makefile with -ldflags.
var version = "dev"

// The flags of each view, one line each. The default view and gpus share
// listFlags.

func listFlags(fs *pflag.FlagSet, m *listMode) {
	fs.StringVar(&m.stateFile, "state-file", inventory.DefaultPath, "state file to read")
	fs.BoolVarP(&m.wide, "wide", "w", false, "more columns: ID, image, GPU access, CPU% and host memory (from the cgroup), idle by the site's rule, attribution, owner conflict")
	fs.BoolVar(&m.byUser, "by-user", false, "group workloads per user, with workload and GPU counts")
	fs.BoolVar(&m.byGPU, "by-gpu", false, "one block per GPU (same as the gpus command)")
	fs.BoolVar(&m.json, "json", false, "print the filtered inventory as JSON")
	fs.StringVar(&m.filter.User, "user", "", "only this user's workloads")
	fs.StringVar(&m.filter.Type, "type", "", "only this type: ds01-managed, devcontainer, compose, raw-docker, host-process, other-runtime")
	fs.BoolVar(&m.filter.GPUOnly, "gpu-only", false, "only workloads with GPU access or GPU use")
	fs.BoolVar(&m.filter.All, "all", false, "include stopped containers and pending host processes")
	fs.BoolVar(&m.filter.Idle, "idle", false, "only containers idle by the site's rule (the daemon's verdict: GPU when held, CPU and network under the policy's thresholds)")
	fs.DurationVar(&m.filter.IdleFor, "idle-for", 0, "only containers idle by the site's rule for at least this `duration` (2h, 30m)")
	fs.BoolVar(&m.filter.OverDeadline, "over-deadline", false, "only containers idle past their idle_deadline (idle_since + the policy's timeout)")
	fs.Var(&m.gpu, "gpu", "only workloads with processes on GPU `N` (index)")
	fs.StringVar(&m.sortKey, "sort", "", "sort by mem, util, idle, age (largest first), user or name")
	fs.BoolVarP(&m.quiet, "quiet", "q", false, "print only container IDs (as docker ps -q)")
	fs.BoolVar(&m.pids, "pids", false, "print only the PIDs of host GPU processes (and of other runtimes' GPU processes)")
	fs.StringVar(&m.format, "format", "", "print each row with this Go `template` (fields listed above)")
	fs.BoolVar(&m.noTrunc, "no-trunc", false, "do not cut long cells; full container IDs")
	fs.Var(&m.watch, "watch", "redraw whenever the state file changes, and every interval (--watch 5 = 5 s, --watch 5s, --watch=2m); Ctrl-C ends")
	fs.StringVar(&m.color, "color", "auto", "colour: auto (a terminal, not TERM=dumb or NO_COLOR), always or never")
	fs.BoolVar(&m.stats, "stats", false, "with --wide: live CPU% and MEM from Docker")
	fs.StringVar(&m.dockerHost, "docker-host", "", "Docker `address` for --stats (default $DOCKER_HOST or the local socket)")
	fs.DurationVar(&m.staleAfter, "stale-after", 90*time.Second, "warn when the last scan is older than this (three 30 s intervals)")
	fs.BoolVar(&m.concepts, "concepts", false, "explain origins, GPU access, attribution and the two-cycle rule")
	fs.Lookup("watch").NoOptDefVal = "2s"
}

func reportFlags(fs *pflag.FlagSet, o *reportMode) {
	fs.StringVar(&o.file, "events-file", event.DefaultPath, "event log (its logrotate archives <file>-YYYYMMDD[.gz] and <file>.N[.gz] are read too)")
	fs.StringVar(&o.stateFile, "state-file", inventory.DefaultPath, "state file, for the workloads still running")
	fs.StringVar(&o.since, "since", "30d", "start of the period (RFC 3339, 2026-02-04, or 30d back from now)")
	fs.StringVar(&o.until, "until", "", "end of the period (default now)")
	fs.StringVar(&o.by, "by", "user", "group by user, origin or gpu")
	fs.BoolVar(&o.json, "json", false, "print JSON (seconds)")
	fs.BoolVar(&o.csv, "csv", false, "print CSV (seconds)")
	fs.StringVar(&o.color, "color", "auto", "colour: auto, always or never")
	fs.StringVar(&o.sealKey, "seal-key", seal.DefaultKeyPath, "the daemon's sealing key (root only): with it, only the daemon's sealed, unchanged lines count")
	fs.BoolVar(&o.includeUnverified, "include-unverified", false, "count the lines whose seal fails too (they are always warned about)")
}

func verifyFlags(fs *pflag.FlagSet, o *verifyMode) {
	fs.StringVar(&o.file, "events-file", event.DefaultPath, "event log (its logrotate archives are checked too)")
	fs.StringVar(&o.stateFile, "state-file", inventory.DefaultPath, "state file")
	fs.StringVar(&o.sealKey, "seal-key", seal.DefaultKeyPath, "the daemon's sealing key (root only)")
}

const verifyUsage = `Usage: ds01-workloads verify [flags]

Checks, with the daemon's sealing key (root only), that the event log, its
archives and the state file are as the daemon wrote them: every line sealed,
unchanged and in order, none missing, the state's seal right. Prints the
first bad line or file; exits 1 on any failure (journalctl --verify's
counterpart for ds01's records).
`

func eventsFlags(fs *pflag.FlagSet, o *eventsMode) {
	fs.StringVar(&o.file, "events-file", event.DefaultPath, "event log to read")
	fs.StringVar(&o.since, "since", "", "only events at or after this time (RFC 3339, 2026-02-04, '2026-02-04 10:30', or 2h/3d ago)")
	fs.StringVar(&o.until, "until", "", "only events at or before this time (same forms)")
	fs.StringVar(&o.typ, "type", "", "only event types starting with this (e.g. detection, detection.container_)")
	fs.StringVar(&o.user, "user", "", "only this user's events")
	fs.BoolVar(&o.follow, "follow", false, "keep printing new events as they are appended")
	fs.BoolVar(&o.json, "json", false, "print events as JSON lines")
	fs.IntVar(&o.limit, "limit", 50, "print only the last `N` matching events (0: all)")
	fs.StringVar(&o.color, "color", "auto", "colour: auto, always or never")
}

const eventsUsage = `Usage: ds01-workloads events [flags]

Reads the event log. Filters combine with AND; times are compared as times.
`

const gpusUsage = `Usage: ds01-workloads gpus [flags]

One block per GPU: who holds it, how busy it is, and for how long it has
been idle. The same filters as the default view apply.
`

// newRoot builds the command tree; a command's exit status goes to *rc.
func newRoot(e env, rc *int) *cobra.Command {
	var m listMode
	root := &cobra.Command{
		Use:     "ds01-workloads",
		Short:   "show the workloads of a shared GPU server, their owners and GPUs",
		Long:    usage,
		Version: version,
		Args:    cobra.NoArgs,
		RunE:    func(*cobra.Command, []string) error { *rc = list(m, e); return nil },
	}
	listFlags(root.Flags(), &m)

	var g listMode
	gpus := &cobra.Command{
		Use:   "gpus",
		Short: "one block per GPU: who holds it, how busy",
		Long:  gpusUsage,
		Args:  cobra.NoArgs,
		RunE:  func(*cobra.Command, []string) error { g.byGPU = true; *rc = list(g, e); return nil },
	}
	listFlags(gpus.Flags(), &g)
	gpus.Flags().MarkHidden("by-gpu")

	var r reportMode
	report := &cobra.Command{
		Use:   "report",
		Short: "GPU-hours allocated, held and busy per user, origin or GPU",
		Long:  reportUsage,
		Args:  cobra.NoArgs,
		RunE:  func(*cobra.Command, []string) error { *rc = runReport(r, e); return nil },
	}
	reportFlags(report.Flags(), &r)

	var ev eventsMode
	events := &cobra.Command{
		Use:   "events",
		Short: "the event log, filtered",
		Long:  eventsUsage,
		Args:  cobra.NoArgs,
		RunE:  func(*cobra.Command, []string) error { *rc = runEvents(ev, e); return nil },
	}
	eventsFlags(events.Flags(), &ev)

	var vm verifyMode
	verify := &cobra.Command{
		Use:   "verify",
		Short: "check the seals of the event log and the state file (root)",
		Long:  verifyUsage,
		Args:  cobra.NoArgs,
		RunE:  func(*cobra.Command, []string) error { *rc = runVerify(vm, e); return nil },
	}
	verifyFlags(verify.Flags(), &vm)

	conceptsCmd := &cobra.Command{
		Use:   "concepts",
		Short: "origins, GPU access, attribution and the two-cycle rule",
		Long:  concepts,
		Args:  cobra.NoArgs,
		RunE:  func(*cobra.Command, []string) error { fmt.Fprint(e.stdout, concepts); return nil },
	}
	manCmd := &cobra.Command{
		Use:    "__man-options",
		Short:  "the man page's OPTIONS, from the command tree (make man)",
		Hidden: true,
		Args:   cobra.NoArgs,
	}
	root.AddCommand(gpus, report, events, verify, conceptsCmd, manCmd)
	manCmd.RunE = func(*cobra.Command, []string) error { manOptions(e.stdout, root); return nil }

	for _, c := range []*cobra.Command{root, gpus, report, events, verify} {
		c.Flags().SortFlags = false
		complete(c)
	}
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SilenceErrors, root.SilenceUsage, root.DisableSuggestions = true, true, true
	root.SetVersionTemplate("ds01-workloads {{.Version}}\n")
	root.SetHelpFunc(func(c *cobra.Command, _ []string) {
		if c == conceptsCmd {
			fmt.Fprint(e.stdout, concepts)
			return
		}
		if c.Long == "" { // cobra's own commands: completion, help
			fmt.Fprintf(e.stdout, "Usage: %s\n\n%s\n", c.UseLine(), c.Short)
			for _, s := range c.Commands() {
				if !s.Hidden {
					fmt.Fprintf(e.stdout, "  %-12s %s\n", s.Name(), s.Short)
				}
			}
		} else {
			fmt.Fprint(e.stdout, c.Long)
		}
		if c.HasAvailableLocalFlags() {
			fmt.Fprintf(e.stdout, "\nFlags:\n%s", c.LocalFlags().FlagUsagesWrapped(100))
		}
	})
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	return root
}

// complete registers the value completions of a command's flags.
func complete(c *cobra.Command) {
	words := map[string][]string{
		"type":  {inventory.OriginManaged, inventory.OriginDevcontainer, inventory.OriginCompose, inventory.OriginRawDocker, workload.KindHostProcess, workload.KindOtherRuntime},
		"sort":  view.SortKeys(),
		"color": {"auto", "always", "never"},
		"by":    {"user", "origin", "gpu"},
	}
	for name, w := range words {
		if c.Flags().Lookup(name) != nil {
			c.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(w, cobra.ShellCompDirectiveNoFileComp))
		}
	}
	for _, name := range []string{"state-file", "events-file"} {
		if c.Flags().Lookup(name) != nil {
			c.MarkFlagFilename(name)
		}
	}
}

// run parses args and runs the command they name; it returns the exit
// status: 0, 1 for a failure, 2 for a usage error (two lines on stderr).
func run(args []string, e env) int {
	rc := 0
	root := newRoot(e, &rc)
	root.SetArgs(normalize(root, args))
	if err := root.Execute(); err != nil {
		return usageErr(e, "%s", err)
	}
	return rc
}

// normalize makes the command line one that cobra reads the way admins
// type it:
//   - a single-dash long flag (-state-file x, -all), which Go's flag package
//     accepted and older scripts use, gets its second dash;
//   - --watch 5 and --watch 5s become --watch=5 and --watch=5s (the value of
//     --watch is optional, so cobra would not take the next word);
//   - the subcommand moves to the front, so that flags may come before it
//     (ds01-workloads --state-file F gpus), as in git, docker and kubectl.
func normalize(root *cobra.Command, args []string) []string {
	// What each long flag of any command is: takes a value or not.
	takesValue := map[string]bool{}
	cmds := map[string]bool{}
	visit := func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { takesValue[f.Name] = f.NoOptDefVal == "" })
	}
	visit(root)
	for _, c := range root.Commands() {
		visit(c)
		cmds[c.Name()] = true
	}
	takesValue["help"], takesValue["version"] = false, false
	var out []string
	sub := -1
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			if name, _, _ := strings.Cut(a[1:], "="); len(name) > 1 {
				if _, ok := takesValue[name]; ok {
					a = "-" + a
				}
			}
		}
		switch {
		case a == "--watch" && i+1 < len(args) && isInterval(args[i+1]):
			out = append(out, a+"="+args[i+1])
			i++
			continue
		case strings.HasPrefix(a, "--") && !strings.Contains(a, "="):
			out = append(out, a)
			if takesValue[a[2:]] && i+1 < len(args) {
				out = append(out, args[i+1])
				i++
			}
			continue
		case len(a) == 2 && a[0] == '-':
			out = append(out, a)
			if f := root.Flags().ShorthandLookup(a[1:]); f != nil && f.NoOptDefVal == "" && i+1 < len(args) {
				out = append(out, args[i+1])
				i++
			}
			continue
		case !strings.HasPrefix(a, "-") && sub < 0:
			sub = len(out)
		}
		out = append(out, a)
	}
	if sub > 0 && cmds[out[sub]] || sub > 0 && out[sub] == "help" || sub > 0 && out[sub] == "completion" {
		word := out[sub]
		out = append([]string{word}, append(out[:sub:sub], out[sub+1:]...)...)
	}
	return out
}

// isInterval is what --watch takes: seconds (5) or a duration (5s, 2m).
func isInterval(s string) bool {
	_, err := parseInterval(s)
	return err == nil
}

func parseInterval(s string) (time.Duration, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil && n > 0 {
		return time.Duration(n) * time.Second, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return d, nil
	}
	return 0, fmt.Errorf("want an interval such as 5 (seconds), 5s or 2m")
}

// watchFlag is --watch, with an optional interval: --watch, --watch 5,
// --watch 5s, --watch=2m.
type watchFlag struct {
	on    bool
	every time.Duration
}

func (w *watchFlag) String() string { return "" }
func (w *watchFlag) Type() string   { return "" }
func (w *watchFlag) Set(v string) error {
	switch v {
	case "true":
		w.on = true
		return nil
	case "false":
		w.on = false
		return nil
	}
	d, err := parseInterval(v)
	if err != nil {
		return err
	}
	w.on, w.every = true, d
	return nil
}

// optInt is an int flag that knows whether it was given, so that the help
// shows no made-up default.
type optInt struct {
	n   int
	set bool
}

func (o *optInt) String() string {
	if !o.set {
		return ""
	}
	return strconv.Itoa(o.n)
}
func (o *optInt) Type() string { return "int" }
func (o *optInt) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("want a number")
	}
	o.n, o.set = n, true
	return nil
}
