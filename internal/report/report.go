// Package report is what ds01-workloads reads from the event log (with
// event.Reader): the GPU-time accounting of "report", the listing of
// "events" (and --follow), and the seal check of "verify".
package report

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ds01/ds01-detectord/internal/asciijson"
	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/internal/view"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// ReportRow is one group of the GPU-time report.
type Row struct {
	Key              string   `json:"key"`
	Workloads        int      `json:"workloads"`
	AllocatedSeconds float64  `json:"gpu_allocated_seconds"`
	HeldSeconds      float64  `json:"gpu_held_seconds"`
	BusySeconds      float64  `json:"gpu_busy_seconds"`
	Efficiency       *float64 `json:"efficiency"` // busy / held; null when nothing was held
}

// ReportDoc is report --json.
type Doc struct {
	Since  *inventory.Time `json:"since"`
	Until  *inventory.Time `json:"until"`
	By     string          `json:"by"`
	Rows   []Row           `json:"rows"`
	Totals Row             `json:"totals"`
	Now    time.Time       `json:"-"` // when it was made: the end of an open period
}

// ReportInput says what to count.
type Input struct {
	Since, Until time.Time // Until zero: now
	By           string    // user, origin or gpu
	EventsFile   string    // its rotated archives (ArchiveNames) are read too
	State        inventory.State
	// Warn receives one line for each file skipped (a FIFO or a directory
	// named like an archive) and for lines that fail their seal; nil drops
	// them.
	Warn func(string)
	// Key, when set, checks the lines' seals: only the daemon's sealed,
	// unchanged lines count, unless IncludeUnverified.
	Key               *seal.Key
	IncludeUnverified bool
	// StateSealed says State's seal was checked with Key: its record of
	// the chain's end then tells lines deleted from the log's end.
	StateSealed bool
}

type workloadTime struct {
	user, origin          string
	gpus                  []string
	allocated, held, busy float64
	count                 int // workloads it stands for; 0: one
}

// BuildReport sums GPU-seconds per group: the counters of every workload
// whose exit (detection.container_exited, detection.host_gpu_process_exited)
// falls in the period, from the event log and its archives, plus the
// counters so far of the workloads still running at the last scan when the
// last scan falls in the period. Each workload counts once.
func Build(in Input) (Doc, error) {
	warn := in.Warn
	if warn == nil {
		warn = func(string) {}
	}
	seen := map[string]workloadTime{}
	var chain *seal.Chain
	if in.Key != nil {
		chain = seal.NewChain(in.Key)
	}
	unverified, firstAt := 0, ""
	for e, err := range (event.Reader{Path: in.EventsFile, Archives: true}).Events(context.Background()) {
		var notEvent *event.LineError
		switch {
		case errors.As(err, &notEvent):
			continue
		case errors.Is(err, event.ErrNotRegular):
			warn(err.Error() + ": skipped")
			continue
		case err != nil:
			return Doc{}, err
		}
		line, f, n := e.Raw, e.Pos.File, e.Pos.Line
		if chain != nil {
			status, missing := chain.Next(line)
			if status == seal.Gap {
				warn(fmt.Sprintf("%s:%d: %d sealed lines missing before this one (deleted or moved)", f, n, missing))
			}
			if !status.Counts() {
				if unverified == 0 {
					firstAt = fmt.Sprintf("%s:%d (%s)", f, n, status)
				}
				unverified++
				if !in.IncludeUnverified {
					continue
				}
			}
		}
		t := e.Timestamp.Time
		if (!in.Since.IsZero() && t.Before(in.Since)) || (!in.Until.IsZero() && t.After(in.Until)) {
			continue
		}
		var d struct {
			ContainerID string   `json:"container_id"`
			Pid         int      `json:"pid"`
			StartTime   uint64   `json:"start_time"`
			Origin      string   `json:"origin"`
			GPUUUIDs    []string `json:"gpu_uuids"`
			Count       int      `json:"count"`
			event.GPUSeconds
			ByOwner []inventory.OwnerSeconds `json:"gpu_seconds_by_owner"`
		}
		switch e.EventType {
		case event.ContainerExited, event.HostProcessExited, event.ShortProcesses:
		default:
			continue
		}
		if json.Unmarshal(e.Details, &d) != nil {
			continue
		}
		if e.EventType == event.ShortProcesses { // one line per user and period
			seen["s:"+userOr(e.User)+"@"+e.Timestamp.Time.String()] = workloadTime{user: userOr(e.User), origin: workload.KindHostProcess, gpus: d.GPUUUIDs,
				allocated: d.GPUAllocatedSeconds, held: d.GPUHeldSeconds, busy: d.GPUBusySeconds, count: max(d.Count, 1)}
			continue
		}
		key, origin := "c:"+d.ContainerID, d.Origin
		if e.EventType == event.HostProcessExited {
			key, origin = "p:"+strconv.Itoa(d.Pid)+"@"+strconv.FormatUint(d.StartTime, 10), workload.KindHostProcess
		}
		if len(d.ByOwner) > 0 { // each owner's seconds are theirs
			for _, o := range d.ByOwner {
				seen[key+"@"+o.User] = workloadTime{user: userOr(o.User), origin: origin, gpus: d.GPUUUIDs,
					allocated: o.GPUAllocatedSeconds, held: o.GPUHeldSeconds, busy: o.GPUBusySeconds}
			}
			seen[key] = workloadTime{} // counted: the running entry is not added again
			continue
		}
		seen[key] = workloadTime{user: userOr(e.User), origin: origin, gpus: d.GPUUUIDs,
			allocated: d.GPUAllocatedSeconds, held: d.GPUHeldSeconds, busy: d.GPUBusySeconds}
	}
	if h, ok := seal.ParseHead(in.State.SealHead); ok && chain != nil && in.StateSealed {
		var pending [][]byte
		for _, l := range in.State.UnloggedEvents {
			pending = append(pending, []byte(l))
		}
		if err := chain.CheckEnd(h, pending); err != nil {
			warn(err.Error())
		}
	}
	if unverified > 0 {
		what := "left out; --include-unverified counts them"
		if in.IncludeUnverified {
			what = "counted (--include-unverified)"
		}
		warn(fmt.Sprintf("%d event lines are not the daemon's sealed lines (not sealed, edited, or out of order), the first at %s: %s; ds01-workloads verify says more", unverified, firstAt, what))
	}
	st := in.State
	// The running workloads count when the last scan falls in the period.
	if st.LastScan != nil && (in.Until.IsZero() || !in.Until.Before(st.LastScan.Time)) && (in.Since.IsZero() || !st.LastScan.Before(in.Since)) {
		for _, c := range st.Containers {
			key := "c:" + c.ID
			if _, done := seen[key]; done {
				continue
			}
			if len(c.OwnerSeconds) > 0 {
				for _, o := range c.OwnerSeconds {
					seen[key+"@"+o.User] = workloadTime{user: userOr(o.User), origin: c.Origin, gpus: containerGPUs(c),
						allocated: o.GPUAllocatedSeconds, held: o.GPUHeldSeconds, busy: o.GPUBusySeconds}
				}
				seen[key] = workloadTime{}
				continue
			}
			seen[key] = workloadTime{user: userOr(c.User), origin: c.Origin, gpus: containerGPUs(c),
				allocated: c.GPUAllocatedSeconds, held: c.GPUHeldSeconds, busy: c.GPUBusySeconds}
		}
		for _, p := range st.HostProcesses {
			key := "p:" + strconv.Itoa(p.Pid) + "@" + strconv.FormatUint(p.StartTime, 10)
			if _, done := seen[key]; done {
				continue
			}
			seen[key] = workloadTime{user: userOr(p.User), origin: workload.KindHostProcess, gpus: []string{p.GPUUUID},
				allocated: p.GPUAllocatedSeconds, held: p.GPUHeldSeconds, busy: p.GPUBusySeconds}
		}
		// Short processes not yet in the log (their aggregate line comes
		// at most --interval later).
		for u, a := range st.ShortProcesses {
			seen["s:"+userOr(u)+"@pending"] = workloadTime{user: userOr(u), origin: workload.KindHostProcess, gpus: a.GPUUUIDs,
				allocated: a.GPUAllocatedSeconds, held: a.GPUHeldSeconds, busy: a.GPUBusySeconds, count: max(a.Count, 1)}
		}
	}
	groups := map[string]*Row{}
	add := func(key string, share float64, w workloadTime) {
		r, ok := groups[key]
		if !ok {
			r = &Row{Key: key}
			groups[key] = r
		}
		r.Workloads += max(w.count, 1)
		r.AllocatedSeconds += w.allocated * share
		r.HeldSeconds += w.held * share
		r.BusySeconds += w.busy * share
	}
	for _, w := range seen {
		if w.held == 0 && w.allocated == 0 && w.busy == 0 {
			continue // never near a GPU
		}
		switch in.By {
		case "origin":
			add(w.origin, 1, w)
		case "gpu":
			if len(w.gpus) == 0 {
				add("none", 1, w)
				continue
			}
			for _, g := range w.gpus { // split evenly over the GPUs it held
				add(gpuName(st, g), 1/float64(len(w.gpus)), w)
			}
		default:
			add(w.user, 1, w)
		}
	}
	doc := Doc{By: in.By, Rows: []Row{}, Totals: Row{Key: "TOTAL"}}
	if doc.By == "" {
		doc.By = "user"
	}
	if !in.Since.IsZero() {
		doc.Since = inventory.TimePtr(in.Since)
	}
	if !in.Until.IsZero() {
		doc.Until = inventory.TimePtr(in.Until)
	}
	for _, r := range groups {
		r.Efficiency = efficiency(r.BusySeconds, r.HeldSeconds)
		doc.Rows = append(doc.Rows, *r)
		doc.Totals.Workloads += r.Workloads
		doc.Totals.AllocatedSeconds += r.AllocatedSeconds
		doc.Totals.HeldSeconds += r.HeldSeconds
		doc.Totals.BusySeconds += r.BusySeconds
	}
	doc.Totals.Efficiency = efficiency(doc.Totals.BusySeconds, doc.Totals.HeldSeconds)
	sort.Slice(doc.Rows, func(i, j int) bool {
		if doc.Rows[i].HeldSeconds != doc.Rows[j].HeldSeconds {
			return doc.Rows[i].HeldSeconds > doc.Rows[j].HeldSeconds
		}
		return doc.Rows[i].Key < doc.Rows[j].Key
	})
	return doc, nil
}

func userOr(u string) string {
	if u == "" {
		return "unknown"
	}
	return u
}

func containerGPUs(c inventory.Container) []string {
	set := map[string]bool{}
	var out []string
	for _, p := range c.GPUProcesses {
		if !set[p.GPUUUID] {
			set[p.GPUUUID] = true
			out = append(out, p.GPUUUID)
		}
	}
	return out
}

func gpuName(st inventory.State, uuid string) string {
	if g, ok := st.GPUs[uuid]; ok {
		return "GPU " + strconv.Itoa(g.Index)
	}
	return uuid
}

func efficiency(busy, held float64) *float64 {
	if held <= 0 {
		return nil
	}
	e := busy / held
	return &e
}

func hours(s float64) string { return fmt.Sprintf("%.2fh", s/3600) }

func effCell(e *float64) string {
	if e == nil {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", *e*100)
}

// WriteReport prints the report as a table, JSON or CSV.
func Write(out io.Writer, doc Doc, format string, style view.Style) error {
	switch format {
	case "json":
		b, err := asciijson.Marshal(doc, "  ")
		if err != nil {
			return err
		}
		_, err = out.Write(append(b, '\n'))
		return err
	case "csv":
		w := csvWriter{csv.NewWriter(out)}
		w.Write([]string{doc.By, "workloads", "gpu_allocated_seconds", "gpu_held_seconds", "gpu_busy_seconds", "efficiency"})
		for _, r := range append(doc.Rows, doc.Totals) {
			eff := ""
			if r.Efficiency != nil {
				eff = strconv.FormatFloat(*r.Efficiency, 'f', 4, 64)
			}
			w.Write([]string{r.Key, strconv.Itoa(r.Workloads), strconv.FormatFloat(r.AllocatedSeconds, 'f', 0, 64),
				strconv.FormatFloat(r.HeldSeconds, 'f', 0, 64), strconv.FormatFloat(r.BusySeconds, 'f', 0, 64), eff})
		}
		w.Flush()
		return w.Error()
	}
	fmt.Fprintln(out, style.Dim("Period: "+doc.Period()))
	if len(doc.Rows) == 0 {
		fmt.Fprintln(out, "No GPU time in this period")
		return nil
	}
	title := strings.ToUpper(doc.By)
	lines := [][]string{{title, "WORKLOADS", "ALLOCATED", "HELD", "BUSY", "EFFICIENCY"}}
	for _, r := range append(doc.Rows, doc.Totals) {
		lines = append(lines, []string{view.Cut(r.Key, 32), strconv.Itoa(r.Workloads), hours(r.AllocatedSeconds), hours(r.HeldSeconds), hours(r.BusySeconds), effCell(r.Efficiency)})
	}
	width := make([]int, len(lines[0]))
	for _, l := range lines {
		for i, c := range l {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	for n, l := range lines {
		var b strings.Builder
		for i, c := range l {
			if i == 0 {
				b.WriteString(c + strings.Repeat(" ", width[i]-len([]rune(c))+2))
				continue
			}
			b.WriteString(strings.Repeat(" ", width[i]-len([]rune(c))) + c + "  ")
		}
		text := strings.TrimRight(b.String(), " ")
		if n == 0 || n == len(lines)-1 {
			text = style.Bold(text)
		}
		fmt.Fprintln(out, text)
	}
	fmt.Fprintln(out, style.Dim("GPU-hours: allocated = granted by the configuration, held = GPUs with the workload's processes, busy = at or above the idle threshold"))
	return nil
}

// Period says which time the report covers, in UTC.
func (d Doc) Period() string {
	const layout = "2006-01-02 15:04 MST"
	from := "the start of the log"
	if d.Since != nil {
		from = d.Since.UTC().Format(layout)
	}
	to := "now"
	if d.Until != nil {
		to = d.Until.UTC().Format(layout)
	} else if !d.Now.IsZero() {
		to = "now (" + d.Now.UTC().Format(layout) + ")"
	}
	return from + " to " + to
}

// csvWriter writes cells that a spreadsheet would take for a formula
// (starting with =, +, -, @, tab or CR) with a leading ', OWASP's rule
// against CSV injection: user names and group keys come from users.
type csvWriter struct{ *csv.Writer }

func (w csvWriter) Write(cells []string) error {
	for i, c := range cells {
		cells[i] = CSVCell(c)
	}
	return w.Writer.Write(cells)
}

// CSVCell returns c with a leading ' when a spreadsheet would read it as
// a formula.
func CSVCell(c string) string {
	if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
		return "'" + c
	}
	return c
}
