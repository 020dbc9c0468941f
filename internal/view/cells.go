package view

import (
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/docker/go-units"
	"github.com/ds01/ds01-detectord/internal/textcut"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// dockerStatus is a container's status the way docker ps shows it: "Up 3
// days", "Exited (137) 2 hours ago", "Created".
func dockerStatus(c inventory.Container, now time.Time) string {
	since := func(t *inventory.Time) string {
		if t == nil {
			return ""
		}
		return units.HumanDuration(now.Sub(t.Time))
	}
	code := ""
	if c.ExitCode != nil {
		code = " (" + strconv.Itoa(*c.ExitCode) + ")"
	}
	switch c.Status {
	case "running":
		if c.StartedAt != nil {
			return "Up " + since(c.StartedAt)
		}
		return "Up"
	case "paused":
		if c.StartedAt != nil {
			return "Up " + since(c.StartedAt) + " (Paused)"
		}
		return "Paused"
	case "restarting":
		if c.FinishedAt != nil {
			return "Restarting" + code + " " + since(c.FinishedAt) + " ago"
		}
		return "Restarting"
	case "exited":
		if c.FinishedAt != nil {
			return "Exited" + code + " " + since(c.FinishedAt) + " ago"
		}
		return "Exited"
	case "created":
		return "Created"
	case "removing":
		return "Removal In Progress"
	case "dead":
		return "Dead"
	}
	return c.Status
}

// Mem renders MiB in human units, labelled as what they are.
func Mem(mib *int64) string {
	if mib == nil {
		return "-"
	}
	if *mib < 1024 {
		return strconv.FormatInt(*mib, 10) + "MiB"
	}
	return fmt.Sprintf("%.1fGiB", float64(*mib)/1024)
}

func pctCell(v *int) string {
	if v == nil {
		return "-"
	}
	return strconv.Itoa(*v) + "%"
}

// Duration renders seconds compactly: 45s, 12m, 3h12m, 2d4h.
func Duration(s int64) string {
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm", s/60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
}

func idleCell(w Workload) string {
	if w.IdleSeconds == nil {
		return "-"
	}
	return "idle " + Duration(*w.IdleSeconds)
}

// gpusCell shows the GPUs in use, and the grant in brackets where it
// differs: a container using a GPU it was not granted, or granted more
// (or other) GPUs than it uses. GPUs compare by physical index, so a MIG
// slot 3.0 and the instance 3/gi1 are the same GPU.
func gpusCell(w Workload) string {
	inUse := strings.Join(w.GPUsInUse, ",")
	if inUse == "" {
		inUse = "-"
	}
	if w.Kind != workload.KindContainer {
		return inUse
	}
	switch {
	case w.Granted == "" && len(w.GPUsInUse) == 0:
		return "-"
	case w.Granted == "":
		return inUse + " (+none)"
	case w.Granted != "all" && samePhysical(w.GPUsInUse, strings.Split(w.Granted, ",")):
		return inUse
	}
	return inUse + " (+" + w.Granted + ")"
}

// samePhysical reports whether two GPU lists name the same physical GPUs.
func samePhysical(a, b []string) bool {
	set := func(l []string) map[string]bool {
		m := map[string]bool{}
		for _, g := range l {
			if f := strings.FieldsFunc(g, func(r rune) bool { return r == '.' || r == '/' }); len(f) > 0 {
				m[f[0]] = true
			}
		}
		return m
	}
	return maps.Equal(set(a), set(b))
}

func ptr64(p *int64) int64 {
	if p == nil {
		return -1
	}
	return *p
}

func ptrInt(p *int) int64 {
	if p == nil {
		return -1
	}
	return int64(*p)
}

// clean makes a cell printable on one line: anything that is not a
// graphic character is shown escaped. That covers C0 and C1 controls (a
// user name with a newline or an escape sequence), Unicode format
// characters (category Cf: bidi overrides such as U+202E, zero-width
// joiners), line and paragraph separators, and invalid UTF-8.
func clean(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsGraphic(r) || r == utf8.RuneError }) < 0 {
		return s
	}
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}

// Cut makes s one printable line (clean) of at most n runes, ending in …
// when it was cut; n <= 0 is no limit.
func Cut(s string, n int) string {
	s = clean(s)
	if n <= 0 || utf8.RuneCountInString(s) <= n {
		return s
	}
	return textcut.Runes(s, n-1) + "…"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cpuCell is a CPU percent (100 = one core), "-" when unknown.
func cpuCell(v *float64) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v, 'f', 1, 64)
}

// HumanBytes writes a byte count as docker stats does: 1.5GiB.
func HumanBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// Style decides colours, and the width tables must fit in (0: any).
type Style struct {
	Color bool
	Width int // the terminal's columns; tables shrink to fit, NAME and IMAGE first
}

const (
	green  = "\x1b[0;32m"
	yellow = "\x1b[1;33m"
	red    = "\x1b[0;31m"
	bold   = "\x1b[1m"
	dim    = "\x1b[2m"
	reset  = "\x1b[0m"
)

func (s Style) paint(code, text string) string {
	if !s.Color || text == "" {
		return text
	}
	return code + text + reset
}

func typeColor(t string) string {
	switch t {
	case inventory.OriginManaged:
		return green
	case inventory.OriginDevcontainer, inventory.OriginCompose:
		return yellow
	}
	return red
}

// Bold and Dim paint text when s has colours.
func (s Style) Bold(text string) string { return s.paint(bold, text) }
func (s Style) Dim(text string) string  { return s.paint(dim, text) }
