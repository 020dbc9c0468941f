package view

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/ds01/ds01-detectord/internal/workload"
)

// Stats are live figures for a running container (--stats).
type Stats struct{ CPU, Mem string }

type column struct {
	title string
	max   int // cut cells to this many runes; 0: no limit
	value func(Workload) string
	color func(Workload) string
}

func columns(o Options, withUser bool) []column {
	cols := []column{{title: "TYPE", value: func(w Workload) string { return w.Type }, color: func(w Workload) string { return typeColor(w.Type) }}}
	if withUser {
		cols = append(cols, column{title: "USER", max: 24, value: func(w Workload) string { return w.User }})
	}
	cols = append(cols,
		column{title: "GPUS", max: 24, value: gpusCell},
		column{title: "MEM", value: func(w Workload) string { return Mem(w.GPUMemoryMB) }},
		column{title: "UTIL", value: func(w Workload) string { return pctCell(w.UtilPercent) }},
		column{title: "IDLE", value: idleCell, color: func(w Workload) string {
			if w.Idle {
				return yellow
			}
			return ""
		}},
		column{title: "STATUS", max: 32, value: func(w Workload) string { return w.StatusText }},
		column{title: "AGE", value: func(w Workload) string { return FormatAge(w.AgeSeconds) }},
	)
	if o.Wide {
		cols = append(cols,
			column{title: "ID", value: func(w Workload) string {
				if o.NoTrunc && w.FullID != "" {
					return w.FullID
				}
				return w.ID
			}},
			column{title: "IMAGE", max: 32, value: func(w Workload) string { return orDash(w.Image) }},
			column{title: "ACCESS", value: func(w Workload) string {
				if w.Kind != workload.KindContainer {
					return "-"
				}
				return orDash(strings.Join(w.GPUAccess, ","))
			}},
			column{title: "CPU%", value: func(w Workload) string { return cpuCell(w.CPUPercent) }},
			column{title: "HOST-MEM", value: func(w Workload) string {
				if w.MemoryBytes == nil {
					return "-"
				}
				return HumanBytes(uint64(max(*w.MemoryBytes, 0)))
			}},
			column{title: "IDLE-RULE", value: func(w Workload) string {
				if w.IdleFor == nil {
					return "-"
				}
				return FormatAge(w.IdleFor)
			}},
			column{title: "USER-FROM", value: func(w Workload) string { return orDash(w.UserSource) }},
			column{title: "CONFLICT", value: func(w Workload) string {
				if w.UserConflict {
					return "yes"
				}
				return "-"
			}},
		)
		if o.Stats != nil {
			cols = append(cols,
				column{title: "LIVE-CPU%", value: func(w Workload) string { return orDash(o.Stats[w.ID].CPU) }},
				column{title: "LIVE-MEM", value: func(w Workload) string { return orDash(o.Stats[w.ID].Mem) }},
			)
		}
	}
	cols = append(cols, column{title: "NAME", max: 48, value: func(w Workload) string {
		n := w.Name
		if len(w.Flags) > 0 {
			n += " [" + strings.Join(w.Flags, ",") + "]"
		}
		return n
	}})
	if o.NoTrunc {
		for i := range cols {
			cols[i].max = 0
		}
	}
	return cols
}

// Table writes an aligned table with a bold header, indent before each line.
func Table(out io.Writer, ws []Workload, cols []column, st Style, indent string) {
	cells := make([][]string, len(ws))
	width := make([]int, len(cols))
	for i, c := range cols {
		width[i] = utf8.RuneCountInString(c.title)
	}
	for r, w := range ws {
		cells[r] = make([]string, len(cols))
		for i, c := range cols {
			v := Cut(c.value(w), c.max)
			cells[r][i] = v
			if n := utf8.RuneCountInString(v); n > width[i] {
				width[i] = n
			}
		}
	}
	gap := 2
	if st.Width > 0 {
		gap = shrink(cols, width, st.Width-utf8.RuneCountInString(indent))
		for r := range cells {
			for i := range cols {
				cells[r][i] = Cut(cells[r][i], width[i])
			}
		}
	}
	pad := func(s string, i int) string {
		if i == len(cols)-1 {
			return s
		}
		return s + strings.Repeat(" ", max(width[i]-utf8.RuneCountInString(s), 0)+gap)
	}
	var hdr strings.Builder
	for i, c := range cols {
		title := c.title
		if st.Width > 0 {
			title = Cut(title, width[i])
		}
		hdr.WriteString(pad(title, i))
	}
	fmt.Fprintln(out, indent+st.paint(bold, strings.TrimRight(hdr.String(), " ")))
	for r, w := range ws {
		var line strings.Builder
		for i, c := range cols {
			v := pad(cells[r][i], i)
			if c.color != nil && st.Color {
				trimmed := strings.TrimRight(v, " ")
				v = st.paint(c.color(w), trimmed) + v[len(trimmed):]
			}
			line.WriteString(v)
		}
		fmt.Fprintln(out, indent+strings.TrimRight(line.String(), " "))
	}
}

// shrinkOrder is which columns give up width first when a table is wider
// than the terminal, and how narrow each may get; the gaps go from two
// spaces to one after NAME and IMAGE.
var shrinkOrder = []struct {
	title string
	min   int
}{{"NAME", 8}, {"IMAGE", 8}, {"", 0}, {"STATUS", 6}, {"USER-FROM", 6}, {"ACCESS", 6}, {"GPUS", 5}, {"USER", 5}, {"TYPE", 6}, {"ID", 6}, {"IDLE", 5}}

// shrink narrows width (the columns' widths) until a line fits in total
// columns, and returns the gap between columns. As a last resort every
// column goes down to one character.
func shrink(cols []column, width []int, total int) int {
	gap := 2
	over := func() int {
		n := gap * (len(width) - 1)
		for _, w := range width {
			n += w
		}
		return n - total
	}
	take := func(i, floor int) {
		if ex := over(); ex > 0 && width[i] > floor {
			width[i] -= min(ex, width[i]-floor)
		}
	}
	for _, o := range shrinkOrder {
		if over() <= 0 {
			return gap
		}
		if o.title == "" {
			gap = 1
			continue
		}
		for i, c := range cols {
			if c.title == o.title {
				take(i, o.min)
			}
		}
	}
	for i := len(width) - 1; i >= 0 && over() > 0; i-- {
		take(i, 1)
	}
	return gap
}

// Fit cuts a line of plain text to the width (0: any).
func Fit(s string, width int) string {
	if width <= 0 {
		return s
	}
	return Cut(s, width)
}

// Options for Render.
type Options struct {
	Wide, ByUser, NoTrunc bool
	Style                 Style
	Stats                 map[string]Stats // nil unless --stats
}

// Render writes the table (or per-user groups) of ws.
func Render(out io.Writer, ws []Workload, o Options) {
	if len(ws) == 0 {
		fmt.Fprintln(out, "No workloads found")
		return
	}
	if !o.ByUser {
		Table(out, ws, columns(o, true), o.Style, "")
		return
	}
	groups := map[string][]Workload{}
	var users []string
	for _, w := range ws {
		if _, ok := groups[w.User]; !ok {
			users = append(users, w.User)
		}
		groups[w.User] = append(groups[w.User], w)
	}
	sort.Slice(users, func(i, j int) bool {
		a, b := users[i], users[j]
		if (a == "unknown") != (b == "unknown") {
			return b == "unknown"
		}
		return a < b
	})
	cols := columns(o, false)
	for _, u := range users {
		g := groups[u]
		gpus := 0
		for _, w := range g {
			gpus += GPUCount(w)
		}
		name := u
		if name == "" {
			name = `""`
		}
		fmt.Fprintln(out)
		fmt.Fprintln(out, o.Style.paint(bold, fmt.Sprintf("%s (%s, %s)", Cut(name, 40), Plural(len(g), "workload"), Plural(gpus, "GPU"))))
		Table(out, g, cols, o.Style, "  ")
	}
}

// wrap breaks s at spaces into lines of at most width columns (0: one
// line); a word longer than the width is cut.
func wrap(s string, width int) []string {
	if width <= 0 || utf8.RuneCountInString(s) <= width {
		return []string{s}
	}
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		switch {
		case line == "":
			line = w
		case utf8.RuneCountInString(line)+1+utf8.RuneCountInString(w) <= width:
			line += " " + w
		default:
			lines = append(lines, Cut(line, width))
			line = w
		}
	}
	return append(lines, Cut(line, width))
}
