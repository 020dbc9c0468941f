package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ds01/ds01-detectord/internal/workloads"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

const reportUsage = `Usage: ds01-workloads report [flags]

GPU-hours allocated, held and busy, and efficiency (busy/held), per user
(or per origin or GPU), from the exited events in the event log and its
rotated archives (events.jsonl-YYYYMMDD[.gz] and events.jsonl.N[.gz], as
logrotate names them), plus the workloads still running at the last scan.
Each workload counts once, in the period of its exit.

  allocated  running time x GPUs its configuration grants
  held       time x GPUs it had processes on
  busy       time x GPUs where it was at or above the idle threshold

Flags:
`

func runReport(args []string, e env) int {
	fs := flag.NewFlagSet("ds01-workloads report", flag.ContinueOnError)
	file := fs.String("events-file", event.DefaultPath, "event log (its logrotate archives <file>-YYYYMMDD[.gz] and <file>.N[.gz] are read too)")
	stateFile := fs.String("state-file", inventory.DefaultPath, "state file, for the workloads still running")
	since := fs.String("since", "30d", "start of the period (RFC 3339, 2026-02-04, or 30d back from now)")
	until := fs.String("until", "", "end of the period (default now)")
	by := fs.String("by", "user", "group by user, origin or gpu")
	asJSON := fs.Bool("json", false, "print JSON (seconds)")
	asCSV := fs.Bool("csv", false, "print CSV (seconds)")
	color := fs.String("color", "auto", "colour: auto, always or never")
	if rc, ok := parse(fs, args, e, reportUsage); !ok {
		return rc
	}
	switch *by {
	case "user", "origin", "gpu":
	default:
		return usageErr(e, "--by %q: want user, origin or gpu", *by)
	}
	if *asJSON && *asCSV {
		return usageErr(e, "--json and --csv: pick one")
	}
	now := e.now()
	in := workloads.ReportInput{By: *by, EventsFile: *file, Warn: func(msg string) {
		fmt.Fprintln(e.stderr, "ds01-workloads: warning:", msg)
	}}
	var err error
	if *since != "" {
		if in.Since, err = parseWhen(*since, now); err != nil {
			return usageErr(e, "--since: %v", err)
		}
	}
	if *until != "" {
		if in.Until, err = parseWhen(*until, now); err != nil {
			return usageErr(e, "--until: %v", err)
		}
	}
	if st, err := workloads.Load(*stateFile); err == nil {
		in.State = st
	} else {
		fmt.Fprintln(e.stderr, "ds01-workloads: warning: running workloads not counted:", err)
	}
	doc, err := workloads.BuildReport(in)
	if err != nil {
		fmt.Fprintln(e.stderr, "ds01-workloads:", err)
		return 1
	}
	format := ""
	switch {
	case *asJSON:
		format = "json"
	case *asCSV:
		format = "csv"
	}
	if err := workloads.WriteReport(e.stdout, doc, format, workloads.Style{Color: colorOn(*color, e)}); err != nil {
		fmt.Fprintln(e.stderr, "ds01-workloads:", err)
		return 1
	}
	return 0
}

// parseWhen reads a time, or a duration back from now with d for days.
func parseWhen(s string, now time.Time) (time.Time, error) {
	return workloads.ParseTime(s, now)
}

func runCompletion(args []string, e env) int {
	if len(args) != 1 {
		return usageErr(e, "completion needs one shell: bash or zsh")
	}
	flags := "--state-file --wide -w --by-user --by-gpu --json --user --type --gpu-only --all --idle --gpu --sort -q --format --no-trunc --watch --color --stats --docker-host --stale-after --concepts --help"
	cmds := "gpus report events completion help"
	switch args[0] {
	case "bash":
		fmt.Fprintf(e.stdout, `# bash completion for ds01-workloads: source <(ds01-workloads completion bash)
_ds01_workloads() {
	local cur prev
	cur="${COMP_WORDS[COMP_CWORD]}"
	prev="${COMP_WORDS[COMP_CWORD-1]}"
	case "$prev" in
	--type) COMPREPLY=($(compgen -W "ds01-managed devcontainer compose raw-docker host-process other-runtime" -- "$cur")); return ;;
	--sort) COMPREPLY=($(compgen -W "%s" -- "$cur")); return ;;
	--color) COMPREPLY=($(compgen -W "auto always never" -- "$cur")); return ;;
	--by) COMPREPLY=($(compgen -W "user origin gpu" -- "$cur")); return ;;
	--state-file|--events-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
	completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return ;;
	esac
	if [ "$COMP_CWORD" -eq 1 ] && [[ "$cur" != -* ]]; then
		COMPREPLY=($(compgen -W "%s" -- "$cur"))
		return
	fi
	case "${COMP_WORDS[1]}" in
	events) COMPREPLY=($(compgen -W "--events-file --since --until --type --user --follow --json --limit --color --help" -- "$cur")) ;;
	report) COMPREPLY=($(compgen -W "--events-file --state-file --since --until --by --json --csv --color --help" -- "$cur")) ;;
	*) COMPREPLY=($(compgen -W "%s" -- "$cur")) ;;
	esac
}
complete -F _ds01_workloads ds01-workloads
`, strings.Join(workloads.SortKeys(), " "), cmds, flags)
	case "zsh":
		fmt.Fprintf(e.stdout, `#compdef ds01-workloads
# zsh completion for ds01-workloads: ds01-workloads completion zsh > "${fpath[1]}/_ds01-workloads"
_ds01_workloads() {
	local -a cmds
	cmds=(%s)
	if (( CURRENT == 2 )) && [[ $words[2] != -* ]]; then
		_describe 'command' cmds
		return
	fi
	case $words[CURRENT-1] in
	--type) compadd ds01-managed devcontainer compose raw-docker host-process other-runtime; return ;;
	--sort) compadd %s; return ;;
	--color) compadd auto always never; return ;;
	--by) compadd user origin gpu; return ;;
	--state-file|--events-file) _files; return ;;
	esac
	case $words[2] in
	events) compadd -- --events-file --since --until --type --user --follow --json --limit --color --help ;;
	report) compadd -- --events-file --state-file --since --until --by --json --csv --color --help ;;
	*) compadd -- %s ;;
	esac
}
compdef _ds01_workloads ds01-workloads
`, cmds, strings.Join(workloads.SortKeys(), " "), flags)
	default:
		return usageErr(e, "completion %q: want bash or zsh", args[0])
	}
	return 0
}

// watch redraws the view on the alternate screen whenever the state file
// is replaced (inotify on its directory), and at least every interval,
// until Ctrl-C; then it restores the screen.
func watch(m listMode, e env) int {
	every := m.watch.every
	if every == 0 {
		every = 2 * time.Second
	}
	changed := make(chan struct{}, 1)
	if fd, err := unix.InotifyInit1(unix.IN_CLOEXEC); err == nil {
		if _, err := unix.InotifyAddWatch(fd, filepath.Dir(m.stateFile), unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_CREATE|unix.IN_DELETE); err == nil {
			f := os.NewFile(uintptr(fd), "inotify")
			go func() {
				buf := make([]byte, 4096)
				for {
					if _, err := f.Read(buf); err != nil {
						return
					}
					select {
					case changed <- struct{}{}:
					default:
					}
				}
			}()
			defer f.Close()
		} else {
			unix.Close(fd)
		}
	}
	out := e.stdout
	io.WriteString(out, "\x1b[?1049h\x1b[?25l") // alternate screen, hide the cursor
	defer io.WriteString(out, "\x1b[?25h\x1b[?1049l")
	for {
		var b strings.Builder
		show(m, nil, e, &b)
		io.WriteString(out, "\x1b[H\x1b[2J"+strings.ReplaceAll(b.String(), "\n", "\r\n")+
			fmt.Sprintf("\r\nEvery %s or on change; Ctrl-C to quit.", every))
		select {
		case <-e.ctx.Done():
			return 0
		case <-changed:
			time.Sleep(50 * time.Millisecond) // let a burst of renames settle
		case <-time.After(every):
		}
	}
}
