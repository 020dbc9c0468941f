package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ds01/ds01-detectord/internal/report"
	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/internal/view"
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
`

type reportMode struct {
	file, stateFile, since, until, by, color string
	json, csv                                bool
	sealKey                                  string
	includeUnverified                        bool
}

type verifyMode struct{ file, stateFile, sealKey string }

// runVerify checks the seals (view.Verify): exit 0 when everything
// verifies, 1 otherwise.
func runVerify(o verifyMode, e env) int {
	key, err := seal.LoadKey(o.sealKey)
	if err != nil {
		fmt.Fprintf(e.stderr, "ds01-workloads: cannot read the sealing key: %v (verify needs root)\n", err)
		return 1
	}
	if !report.Verify(key, o.file, o.stateFile, e.stdout) {
		return 1
	}
	return 0
}

func runReport(o reportMode, e env) int {
	file, stateFile, since, until, by, asJSON, asCSV, color := &o.file, &o.stateFile, &o.since, &o.until, &o.by, &o.json, &o.csv, &o.color
	switch *by {
	case "user", "origin", "gpu":
	default:
		return usageErr(e, "--by %q: want user, origin or gpu", *by)
	}
	if *asJSON && *asCSV {
		return usageErr(e, "--json and --csv: pick one")
	}
	now := e.now()
	in := report.Input{By: *by, EventsFile: *file, Warn: func(msg string) {
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
	if !in.Since.IsZero() && !in.Until.IsZero() && in.Until.Before(in.Since) {
		return usageErr(e, "--until %s is before --since %s", *until, *since)
	}
	if o.sealKey != "" {
		key, err := seal.LoadKey(o.sealKey)
		if err != nil {
			in.Warn(fmt.Sprintf("the totals are unverified: the sealing key cannot be read (%v); as root, report counts only the daemon's sealed lines", err))
		}
		in.Key, in.IncludeUnverified = key, o.includeUnverified
	}
	if st, err := loadVerified(*stateFile, in.Key); err == nil {
		in.State, in.StateSealed = st, in.Key != nil
	} else if errors.Is(err, seal.ErrUnsealed) || errors.Is(err, seal.ErrBadSeal) {
		if o.includeUnverified {
			in.Warn(fmt.Sprintf("state file %s: %v; its running workloads counted (--include-unverified)", *stateFile, err))
			in.State, _ = load(*stateFile)
		} else {
			in.Warn(fmt.Sprintf("state file %s: %v; its running workloads left out (--include-unverified counts them)", *stateFile, err))
		}
	} else {
		fmt.Fprintln(e.stderr, "ds01-workloads: warning: running workloads not counted:", err)
	}
	doc, err := report.Build(in)
	if err != nil {
		fmt.Fprintln(e.stderr, "ds01-workloads:", err)
		return 1
	}
	doc.Now = now
	format := ""
	switch {
	case *asJSON:
		format = "json"
	case *asCSV:
		format = "csv"
	}
	if err := report.Write(e.stdout, doc, format, view.Style{Color: colorOn(*color, e)}); err != nil {
		fmt.Fprintln(e.stderr, "ds01-workloads:", err)
		return 1
	}
	return 0
}

// parseWhen reads a time, or a duration back from now with d for days.
func parseWhen(s string, now time.Time) (time.Time, error) {
	return report.ParseTime(s, now)
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
	if !e.isTTY {
		// Off a terminal (a pipe, a file): one snapshot per interval or
		// change, with a timestamp line between them and no screen
		// control codes.
		for {
			fmt.Fprintf(out, "--- %s\n", e.now().UTC().Format(time.RFC3339))
			show(m, nil, e, out)
			select {
			case <-e.ctx.Done():
				return 0
			case <-changed:
				time.Sleep(50 * time.Millisecond)
			case <-time.After(every):
			}
		}
	}
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
