package view

import (
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/ds01/ds01-detectord/internal/asciijson"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Summary is the line under the table, and the warnings that go with it.
type Summary struct {
	Containers    int `json:"containers"`
	GPUContainers int `json:"gpu_containers"`
	HostProcesses int `json:"host_gpu_processes"`
	Pending       int `json:"pending_processes"`
	Other         int `json:"other_runtime_gpu_processes"`
	// LastScanAgeSeconds is null when the file has no last_scan.
	LastScanAgeSeconds *int64   `json:"last_scan_age_seconds"`
	Stale              bool     `json:"stale"`
	Warnings           []string `json:"warnings"`
}

// Summarize counts the whole (unfiltered) inventory and checks its health.
// The state is stale when last_scan is older than staleAfter.
func Summarize(st inventory.State, now time.Time, staleAfter time.Duration) Summary {
	s := Summary{Containers: len(st.Containers), HostProcesses: len(st.HostProcesses), Pending: len(st.PendingProcesses), Other: len(st.OtherGPUProcesses), Warnings: []string{}}
	for _, c := range st.Containers {
		if c.HasGPU {
			s.GPUContainers++
		}
	}
	s.LastScanAgeSeconds, _ = age(now, st.LastScan)
	switch {
	case st.LastScan == nil:
		s.Stale = true
		s.Warnings = append(s.Warnings, "the state file has no last_scan: the detector may never have completed a scan. Check 'systemctl status ds01-detectord'.")
	case now.Sub(st.LastScan.Time) > staleAfter:
		s.Stale = true
		s.Warnings = append(s.Warnings, fmt.Sprintf("the last scan was %s ago: the detector may not be running. Check 'systemctl status ds01-detectord'.", FormatAge(s.LastScanAgeSeconds)))
	}
	for _, src := range []struct {
		name string
		h    inventory.SourceHealth
	}{{"Docker", st.Sources.Docker}, {"GPU", st.Sources.GPU}, {"/proc", st.Sources.Proc}} {
		if st.SchemaVersion >= 2 && !src.h.OK && src.h.Error != "" {
			since := "never succeeded"
			if src.h.LastOK != nil {
				since = "last ok " + FormatAge(ageOf(now, src.h.LastOK)) + " ago"
			}
			s.Warnings = append(s.Warnings, fmt.Sprintf("%s source failing (%s): %s", src.name, since, clean(src.h.Error)))
		}
	}
	return s
}

func ageOf(now time.Time, t *inventory.Time) *int64 { a, _ := age(now, t); return a }

// Plural is "1 container", "2 containers".
func Plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	switch {
	case strings.HasSuffix(noun, "ss"):
		return strconv.Itoa(n) + " " + noun + "es"
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// WriteSummary prints the summary line, and its warnings to warn.
func WriteSummary(out, warn io.Writer, s Summary, lastScan *inventory.Time, st Style) {
	ls := "unknown"
	if lastScan != nil {
		ls = lastScan.String() + " (" + FormatAge(s.LastScanAgeSeconds) + " ago)"
	}
	line := fmt.Sprintf("%s (%d with GPU), %s", Plural(s.Containers, "container"), s.GPUContainers, Plural(s.HostProcesses, "host GPU process"))
	if s.Pending > 0 {
		line += fmt.Sprintf(" (+%d pending)", s.Pending)
	}
	if s.Other > 0 {
		line += fmt.Sprintf(", %d in other runtimes", s.Other)
	}
	fmt.Fprintln(out)
	for _, l := range wrap(line+" — last scan: "+ls, st.Width) {
		fmt.Fprintln(out, st.paint(dim, l))
	}
	for _, w := range s.Warnings {
		for _, l := range wrap("WARNING: "+w, st.Width) {
			fmt.Fprintln(warn, st.paint(yellow, l))
		}
	}
}

// JSONDoc is the --json output: the Python scanner's keys (last_scan, and the
// filtered containers and host_processes maps) plus the filtered rows and
// the summary.
type JSONDoc struct {
	LastScan      *inventory.Time                  `json:"last_scan"`
	Containers    map[string]inventory.Container   `json:"containers"`
	HostProcesses map[string]inventory.HostProcess `json:"host_processes"`
	Workloads     []Workload                       `json:"workloads"`
	Summary       Summary                          `json:"summary"`
}

// JSON writes the filtered inventory.
func JSON(out io.Writer, st inventory.State, ws []Workload, sum Summary) error {
	doc := JSONDoc{LastScan: st.LastScan, Containers: map[string]inventory.Container{}, HostProcesses: map[string]inventory.HostProcess{}, Workloads: ws, Summary: sum}
	for _, w := range ws {
		switch w.Kind {
		case workload.KindContainer:
			doc.Containers[w.ID] = st.Containers[w.ID]
		case workload.KindHostProcess:
			k := strconv.Itoa(w.Pid)
			if p, ok := st.HostProcesses[k]; ok && w.Status == "active" {
				doc.HostProcesses[k] = p
			}
		}
	}
	b, err := asciijson.Marshal(doc, "  ")
	if err != nil {
		return err
	}
	_, err = out.Write(append(b, '\n'))
	return err
}

// FormatRow is what --format templates see: one row, display-ready.
type FormatRow struct {
	ID, FullID, Type, User, Name, Status, Age, GPUs, Granted, GPUMemory string
	GPUMemoryMB                                                         *int64
	Util, Idle                                                          string
	IdleSeconds                                                         *int64
	Image, UserSource                                                   string
	UserConflict                                                        bool
	HeldSeconds, BusySeconds, AllocatedSeconds                          float64
}

// FormatRowOf turns a row into what --format templates see. Every text
// field is escaped as the table escapes its cells (control characters,
// escape sequences, bidi overrides): names, users and images come from
// users, and the template's output goes to an admin's terminal.
func FormatRowOf(w Workload) FormatRow {
	r := FormatRow{
		ID: w.ID, FullID: w.FullID, Type: w.Type, User: w.User, Name: w.Name, Status: w.StatusText, Age: FormatAge(w.AgeSeconds),
		GPUs: strings.Join(w.GPUsInUse, ","), Granted: w.Granted, GPUMemory: Mem(w.GPUMemoryMB), GPUMemoryMB: w.GPUMemoryMB,
		Util: pctCell(w.UtilPercent), Idle: idleCell(w), IdleSeconds: w.IdleSeconds, Image: w.Image, UserSource: w.UserSource,
		UserConflict: w.UserConflict, HeldSeconds: w.HeldSecs, BusySeconds: w.BusySecs, AllocatedSeconds: w.AllocatedSecs,
	}
	v := reflect.ValueOf(&r).Elem()
	for i := 0; i < v.NumField(); i++ {
		if f := v.Field(i); f.Kind() == reflect.String {
			f.SetString(clean(f.String()))
		}
	}
	return r
}
