package report

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func exitLine(ts, user, id string, held, busy float64) string {
	d := `{"container_id":"` + id + `","name":"n","origin":"raw-docker","gpu_allocated_seconds":` + ftoa(held) + `,"gpu_held_seconds":` + ftoa(held) + `,"gpu_busy_seconds":` + ftoa(busy) + `}`
	return `{"timestamp":"` + ts + `","event_type":"` + event.ContainerExited + `","schema_version":"1","user":"` + user + `","details":` + d + "}\n"
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// GPU time is summed per user over the log and its archives (a .gz one
// too), each workload once, plus the running ones; a FIFO named like an
// archive is skipped with a warning.
func TestBuild(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "events.jsonl")
	os.WriteFile(log, []byte(exitLine("2026-02-03T10:00:00Z", "alice", "a1", 3600, 1800)+"garbage\n"), 0o644)
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write([]byte(exitLine("2026-02-01T10:00:00Z", "bob", "b1", 7200, 0) + exitLine("2026-02-01T11:00:00Z", "alice", "a0", 3600, 3600)))
	w.Close()
	os.WriteFile(log+"-20260202.gz", gz.Bytes(), 0o644)
	if err := syscall.Mkfifo(log+".1", 0o644); err != nil {
		t.Fatal(err)
	}
	st := inventory.Empty()
	st.LastScan = inventory.TimePtr(time.Date(2026, 2, 4, 0, 0, 0, 0, time.UTC))
	st.Containers["c1"] = inventory.Container{ID: "c1", User: "carol", Origin: "compose", GPUHeldSeconds: 100, GPUAllocatedSeconds: 100}
	var warnings []string
	doc, err := Build(Input{EventsFile: log, State: st, Warn: func(s string) { warnings = append(warnings, s) }})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Row{}
	for _, r := range doc.Rows {
		got[r.Key] = r
	}
	if a := got["alice"]; a.Workloads != 2 || a.HeldSeconds != 7200 || a.BusySeconds != 5400 || a.Efficiency == nil || *a.Efficiency != 0.75 {
		t.Errorf("alice: %+v", a)
	}
	if b := got["bob"]; b.Workloads != 1 || b.HeldSeconds != 7200 {
		t.Errorf("bob: %+v", b)
	}
	if c := got["carol"]; c.Workloads != 1 || c.HeldSeconds != 100 {
		t.Errorf("carol (running): %+v", c)
	}
	if doc.Totals.Workloads != 4 || len(doc.Rows) != 3 || doc.Rows[0].HeldSeconds < doc.Rows[2].HeldSeconds {
		t.Errorf("totals %+v, rows %+v", doc.Totals, doc.Rows)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "not a regular file") || !strings.Contains(warnings[0], "skipped") {
		t.Errorf("warnings: %q", warnings)
	}
	// A period: only alice's exit of 3 February.
	doc, _ = Build(Input{EventsFile: log, Since: time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC), Until: time.Date(2026, 2, 3, 23, 0, 0, 0, time.UTC)})
	if len(doc.Rows) != 1 || doc.Rows[0].Key != "alice" || doc.Rows[0].HeldSeconds != 3600 {
		t.Errorf("period: %+v", doc.Rows)
	}
	// No log and no archives: an error that says so.
	if _, err := Build(Input{EventsFile: filepath.Join(dir, "none.jsonl")}); err == nil || !strings.Contains(err.Error(), "no event log") {
		t.Errorf("no log: %v", err)
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 2, 4, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"now":                  now,
		"2h":                   now.Add(-2 * time.Hour),
		"3d":                   now.Add(-72 * time.Hour),
		"2026-02-01":           time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC),
		"2026-02-01 10:30":     time.Date(2026, 2, 1, 10, 30, 0, 0, time.UTC),
		"2026-02-01T10:30:00Z": time.Date(2026, 2, 1, 10, 30, 0, 0, time.UTC),
	} {
		if got, err := ParseTime(in, now); err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"yesterday", "-2h", "3x"} {
		if _, err := ParseTime(bad, now); err == nil {
			t.Errorf("ParseTime(%q) took it", bad)
		}
	}
}

func TestKeyValues(t *testing.T) {
	if got := KeyValues([]byte(`{"a":"x y","b":1,"c":{"d":[1, 2]},"e":""}`)); got != `a="x y" b=1 c={"d":[1,2]} e=""` {
		t.Errorf("KeyValues: %s", got)
	}
}
