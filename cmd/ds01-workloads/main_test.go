package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"

	"github.com/spf13/pflag"

	"github.com/ds01/ds01-detectord/internal/report"
	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/internal/view"
)

var update = flag.Bool("update", false, "rewrite golden files")

// now is fixed, ten seconds after full.json's last scan.
var now = time.Date(2026, 2, 4, 10, 30, 10, 0, time.UTC)

func invoke(args []string, tty bool, extraEnv map[string]string) (string, string, int) {
	var out, errb bytes.Buffer
	e := env{stdout: &out, stderr: &errb, now: func() time.Time { return now }, isTTY: tty, ctx: context.Background(),
		getenv: func(k string) string { return extraEnv[k] }}
	rc := run(withoutSeal(args), e)
	return out.String(), errb.String(), rc
}

// withoutSeal gives report no sealing key unless the test names one: the
// default is the host's (/var/lib/ds01-detectord), and the fixtures are
// not sealed.
func withoutSeal(args []string) []string {
	report := false
	for _, a := range args {
		if strings.HasPrefix(a, "--seal-key") {
			return args
		}
		report = report || a == "report"
	}
	if !report {
		return args
	}
	return append(slices.Clone(args), "--seal-key=")
}

// TestMain removes the programs the tests built (testbin).
func TestMain(m *testing.M) { testbin.Main(m) }

func td(name string) string { return filepath.Join("testdata", name) }

func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		tty  bool
		env  map[string]string
	}{
		{"default", []string{"--state-file", td("full.json")}, false, nil},
		{"all", []string{"--state-file", td("full.json"), "--all"}, false, nil},
		{"wide-all", []string{"--state-file", td("full.json"), "--wide", "--all"}, false, nil},
		{"by-user-all", []string{"--state-file", td("full.json"), "--by-user", "--all"}, false, nil},
		{"by-user-wide", []string{"--state-file", td("full.json"), "--by-user", "-w"}, false, nil},
		{"json-gpu-only", []string{"--state-file", td("full.json"), "--json", "--gpu-only"}, false, nil},
		{"color-tty", []string{"--state-file", td("full.json")}, true, nil},
		{"no-color-env", []string{"--state-file", td("full.json")}, true, map[string]string{"NO_COLOR": "1"}},
		{"stale", []string{"--state-file", td("stale.json")}, false, nil},
		{"failing-source", []string{"--state-file", td("failing.json")}, false, nil},
		{"reference-format", []string{"--state-file", td("reference.json"), "--all", "--wide"}, false, nil},
		{"reference-by-user", []string{"--state-file", td("reference.json"), "--by-user"}, false, nil},
		{"empty-file", []string{"--state-file", td("empty.json")}, false, nil},
		{"corrupt-file", []string{"--state-file", td("corrupt.json")}, false, nil},
		{"missing-file", []string{"--state-file", td("nope.json")}, false, nil},
		{"no-rows", []string{"--state-file", td("full.json"), "--user", "nobody"}, false, nil},
		{"bad-type", []string{"--state-file", td("full.json"), "--type", "docker"}, false, nil},
		{"bad-flag", []string{"--frobnicate"}, false, nil},
		{"concepts", []string{"--concepts"}, false, nil},
		{"help-concepts", []string{"help", "concepts"}, false, nil},
		{"events", []string{"events", "--events-file", td("events.jsonl")}, false, nil},
		{"events-since-until", []string{"events", "--events-file", td("events.jsonl"), "--since", "2026-02-04T09:30:00Z", "--until", "2026-02-04T10:28:00Z"}, false, nil},
		{"events-since-duration", []string{"events", "--events-file", td("events.jsonl"), "--since", "10m"}, false, nil},
		{"events-type-user", []string{"events", "--events-file", td("events.jsonl"), "--type", "detection.container", "--user", "alice"}, false, nil},
		{"events-json", []string{"events", "--events-file", td("events.jsonl"), "--json", "--type", "detection"}, false, nil},
		{"events-bad-since", []string{"events", "--events-file", td("events.jsonl"), "--since", "yesterday-ish"}, false, nil},
		{"events-missing", []string{"events", "--events-file", td("nope.jsonl")}, false, nil},
		{"events-none", []string{"events", "--events-file", td("events.jsonl"), "--user", "zed"}, false, nil},
		// Held versus used.
		{"held-default", []string{"--state-file", td("held.json")}, false, nil},
		{"held-all", []string{"--state-file", td("held.json"), "--all"}, false, nil},
		{"held-wide", []string{"--state-file", td("held.json"), "--wide", "--all"}, false, nil},
		{"held-wide-no-trunc", []string{"--state-file", td("held.json"), "--wide", "--no-trunc"}, false, nil},
		{"held-by-user", []string{"--state-file", td("held.json"), "--by-user"}, false, nil},
		{"gpus", []string{"gpus", "--state-file", td("held.json")}, false, nil},
		{"by-gpu-alias", []string{"--state-file", td("held.json"), "--by-gpu"}, false, nil},
		{"gpus-old-file", []string{"gpus", "--state-file", td("full.json")}, false, nil},
		{"gpus-idle-user", []string{"gpus", "--state-file", td("idle.json"), "--idle", "--user", "bob"}, false, nil},
		{"idle", []string{"--state-file", td("held.json"), "--idle"}, false, nil},
		{"gpu-3", []string{"--state-file", td("held.json"), "--gpu", "3"}, false, nil},
		{"filters-and", []string{"--state-file", td("idle.json"), "--gpu", "1", "--idle", "--user", "bob", "--type", "devcontainer", "--gpu-only"}, false, nil},
		{"filters-and-none", []string{"--state-file", td("held.json"), "--gpu", "2", "--idle"}, false, nil},
		{"sort-mem", []string{"--state-file", td("held.json"), "--sort", "mem"}, false, nil},
		{"sort-util", []string{"--state-file", td("held.json"), "--sort", "util"}, false, nil},
		{"sort-idle", []string{"--state-file", td("held.json"), "--sort", "idle", "--all"}, false, nil},
		{"sort-age", []string{"--state-file", td("held.json"), "--sort", "age"}, false, nil},
		{"sort-user", []string{"--state-file", td("held.json"), "--sort", "user"}, false, nil},
		{"sort-name", []string{"--state-file", td("held.json"), "--sort", "name", "--all"}, false, nil},
		{"quiet", []string{"--state-file", td("held.json"), "-q", "--all"}, false, nil},
		{"quiet-no-trunc", []string{"--state-file", td("held.json"), "-q", "--no-trunc", "--user", "alice"}, false, nil},
		{"format", []string{"--state-file", td("held.json"), "--format", "{{.Name}} {{.User}} {{.GPUMemory}} {{.Util}} {{.Idle}} {{.Status}}"}, false, nil},
		{"format-bad", []string{"--state-file", td("held.json"), "--format", "{{.Nope"}, false, nil},
		{"format-missing-field", []string{"--state-file", td("held.json"), "--format", "{{.Nope}}"}, false, nil},
		{"json-held", []string{"--state-file", td("held.json"), "--json", "--user", "bob"}, false, nil},
		{"idle-rule", []string{"--state-file", td("idle.json"), "--idle"}, false, nil},
		{"idle-rule-wide", []string{"--state-file", td("idle.json"), "--wide", "--all"}, false, nil},
		{"idle-for", []string{"--state-file", td("idle.json"), "--idle-for", "30m"}, false, nil},
		{"idle-for-bad", []string{"--state-file", td("idle.json"), "--idle-for", "soon"}, false, nil},
		{"over-deadline", []string{"--state-file", td("idle.json"), "--over-deadline"}, false, nil},
		{"json-idle", []string{"--state-file", td("idle.json"), "--json", "--over-deadline"}, false, nil},
		{"color-always", []string{"--state-file", td("held.json"), "--color", "always"}, false, nil},
		{"color-never-tty", []string{"--state-file", td("held.json"), "--color", "never"}, true, nil},
		{"term-dumb", []string{"--state-file", td("held.json")}, true, map[string]string{"TERM": "dumb"}},
		{"bad-sort", []string{"--state-file", td("held.json"), "--sort", "size"}, false, nil},
		{"bad-color", []string{"--state-file", td("held.json"), "--color", "sometimes"}, false, nil},
		{"bad-gpu", []string{"--state-file", td("held.json"), "--gpu", "-3"}, false, nil},
		{"watch-with-json", []string{"--state-file", td("held.json"), "--watch", "--json"}, false, nil},
		{"help", []string{"--help"}, false, nil},
		{"help-short", []string{"-h"}, false, nil},
		{"report", []string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "2026-01-01"}, false, nil},
		{"report-json", []string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "2026-01-01", "--json"}, false, nil},
		{"report-csv", []string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "2026-01-01", "--csv"}, false, nil},
		{"report-by-origin", []string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "2026-01-01", "--by", "origin"}, false, nil},
		{"report-by-gpu", []string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "2026-01-01", "--by", "gpu"}, false, nil},
		{"report-until", []string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "2026-01-01", "--until", "2026-01-31"}, false, nil},
		{"report-since-duration", []string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "30d"}, false, nil},
		{"report-empty", []string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "2030-01-01"}, false, nil},
		{"report-bad-by", []string{"report", "--by", "planet"}, false, nil},
		{"report-help", []string{"report", "--help"}, false, nil},
		{"completion-bash", []string{"completion", "bash"}, false, nil},
		{"completion-zsh", []string{"completion", "zsh"}, false, nil},
		{"completion-fish", []string{"completion", "fish"}, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errb, rc := invoke(tc.args, tc.tty, tc.env)
			got := fmt.Sprintf("$ ds01-workloads %s\nexit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(tc.args, " "), rc, out, errb)
			golden := td(filepath.Join("golden", tc.name+".txt"))
			if *update {
				os.MkdirAll(filepath.Dir(golden), 0o755)
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("differs from %s:\n%s", golden, got)
			}
		})
	}
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		rc   int
	}{
		{[]string{"--state-file", td("full.json")}, 0},
		{[]string{"--state-file", td("full.json"), "--by-user"}, 0}, // the Python scanner exited 1 here
		{[]string{"--state-file", td("full.json"), "--user", "nobody"}, 0},
		{[]string{"--state-file", td("missing.json")}, 1},
		{[]string{"--state-file", td("corrupt.json")}, 1},
		{[]string{"--state-file", td("empty.json")}, 1},
		{[]string{"--state-file", td("full.json"), "--type", "x"}, 2},
		{[]string{"--nope"}, 2},
		{[]string{"extra"}, 2},
		{[]string{"--stats"}, 2},
		{[]string{"-h"}, 0},
		{[]string{"events", "--since", "bogus"}, 2},
		{[]string{"events", "--limit", "-1"}, 2},
	} {
		if _, _, rc := invoke(tc.args, false, nil); rc != tc.rc {
			t.Errorf("%v: exit %d, want %d", tc.args, rc, tc.rc)
		}
	}
}

// Every pair of filters, against containers and host processes alike: the
// JSON rows must be exactly those that satisfy both.
func TestEveryPairOfFilters(t *testing.T) {
	type opt struct {
		flags []string
		pred  func(w view.Workload) bool
	}
	running := func(w view.Workload) bool { return w.Status == "running" || w.Status == "active" }
	opts := map[string]opt{
		"user":     {[]string{"--user", "alice"}, func(w view.Workload) bool { return w.User == "alice" }},
		"user-bob": {[]string{"--user", "bob"}, func(w view.Workload) bool { return w.User == "bob" }},
		"type":     {[]string{"--type", "host-process"}, func(w view.Workload) bool { return w.Type == "host-process" }},
		"type-raw": {[]string{"--type", "raw-docker"}, func(w view.Workload) bool { return w.Type == "raw-docker" }},
		"gpu-only": {[]string{"--gpu-only"}, func(w view.Workload) bool { return w.HasGPU || w.GPUMemoryMB != nil }},
		"all":      {[]string{"--all"}, func(w view.Workload) bool { return true }},
	}
	st, err := load(td("full.json"))
	if err != nil {
		t.Fatal(err)
	}
	everything := view.Rows(st, now)
	names := []string{"user", "user-bob", "type", "type-raw", "gpu-only", "all"}
	for i, a := range names {
		for _, b := range names[i+1:] {
			if strings.HasPrefix(a, "user") && strings.HasPrefix(b, "user") || strings.HasPrefix(a, "type") && strings.HasPrefix(b, "type") {
				continue // the same flag twice
			}
			args := append(append([]string{"--state-file", td("full.json"), "--json"}, opts[a].flags...), opts[b].flags...)
			out, errb, rc := invoke(args, false, nil)
			if rc != 0 {
				t.Fatalf("%v: exit %d %s", args, rc, errb)
			}
			var doc view.JSONDoc
			if err := json.Unmarshal([]byte(out), &doc); err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, w := range everything {
				all := a == "all" || b == "all"
				if opts[a].pred(w) && opts[b].pred(w) && (all || running(w)) {
					want = append(want, w.ID)
				}
			}
			var got []string
			for _, w := range doc.Workloads {
				got = append(got, w.ID)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s + %s: got %v, want %v", a, b, got, want)
			}
			if len(want) == 0 && (a == "user" && b == "gpu-only") {
				t.Errorf("fixture gives no rows for --user alice --gpu-only")
			}
		}
	}
	// --user with --gpu-only picks alice's GPU container and nothing of
	// bob's host process; --user bob --gpu-only picks bob's host process.
	out, _, _ := invoke([]string{"--state-file", td("full.json"), "--json", "--user", "bob", "--gpu-only", "--type", "host-process"}, false, nil)
	var doc view.JSONDoc
	json.Unmarshal([]byte(out), &doc)
	if len(doc.Workloads) != 1 || doc.Workloads[0].ID != "PID:7001" || len(doc.HostProcesses) != 1 || len(doc.Containers) != 0 {
		t.Errorf("three filters: %+v", doc.Workloads)
	}
}

func regexpMatch(re string, lines []string) bool {
	r := regexp.MustCompile(re)
	for _, l := range lines {
		if r.MatchString(l) {
			return true
		}
	}
	return false
}

// The event log is group-writable: whatever a line holds must reach the
// admin's terminal escaped, in the table and in --json, and an absurdly
// long line is skipped, not read whole.
func TestHostileEventLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	lines := []string{
		`{"timestamp":"2026-02-04T10:00:00Z","event_type":"detection.container_discovered","schema_version":"1","user":"` + "\u202eevil\u2066" + `","details":{"name":"x\u001b[2Jy` + "\u200f" + `"}}`,
		`{"timestamp":"2026-02-04T10:01:00Z","event_type":"detection.container_exited","user":"bob` + "\u0085" + `","details":{"note":"` + strings.Repeat("A", 200<<10) + `"}}`,
		`{"timestamp":"2026-02-04T10:02:00Z","event_type":"detection.container_exited","user":"carol"}`,
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"events", "--events-file", path, "--json"}, {"events", "--events-file", path}} {
		out, _, rc := invoke(args, false, nil)
		if rc != 0 {
			t.Fatalf("%v: exit %d", args, rc)
		}
		for i, r := range out {
			if r == '\n' {
				continue
			}
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || unicode.Is(unicode.Cf, r) {
				t.Fatalf("%v: raw %U at %d in:\n%s", args, r, i, out)
			}
		}
		if strings.Contains(out, "AAAA") || !strings.Contains(out, "carol") || !strings.Contains(out, "evil") {
			t.Errorf("%v:\n%s", args, out)
		}
	}
}

// The report over fixtures with a known answer: the archive's and the
// log's exits in the period, plus what is still running at the last scan,
// each workload once. dave's container is both removed in the log and
// still listed in the (older) state: it counts once.
func TestReportKnownAnswer(t *testing.T) {
	out, errb, rc := invoke([]string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "2026-01-01", "--json"}, false, nil)
	if rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb)
	}
	var doc report.Doc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	type secs struct {
		n                 int
		alloc, held, busy float64
	}
	want := map[string]secs{
		"alice":   {2, 7200 + 14400, 3600 + 7200, 1800},                               // archive exit + running aaaa…
		"bob":     {3, 1000 + 2073600 + 300, 1000 + 259200 + 300, 1000 + 86400 + 300}, // archive host exit + bbbb… + pid 7001
		"dave":    {1, 1288800, 900000, 850000},                                       // once, not twice
		"4242":    {1, 5400, 5400, 0},
		"unknown": {1, 0, 60, 60},
	}
	got := map[string]secs{}
	for _, r := range doc.Rows {
		got[r.Key] = secs{r.Workloads, r.AllocatedSeconds, r.HeldSeconds, r.BusySeconds}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("report:\n got %+v\nwant %+v", got, want)
	}
	if doc.Totals.HeldSeconds != 10800+260500+900000+5400+60 {
		t.Errorf("total held %v", doc.Totals.HeldSeconds)
	}
}

// --help goes to stdout, so that `ds01-workloads --help | head -1` shows
// the usage line, and exits 0.
func TestHelpThroughAPipe(t *testing.T) {
	bin := testbin.Path(t, "cmd/ds01-workloads")
	out, err := exec.Command("bash", "-c", bin+" --help | head -1").Output()
	if err != nil {
		t.Fatalf("exit: %v", err)
	}
	if string(out) != "Usage: ds01-workloads [flags]\n" {
		t.Errorf("first line %q", out)
	}
	if out, err := exec.Command(bin, "--help").Output(); err != nil || !strings.HasPrefix(string(out), "Usage: ") {
		t.Errorf("--help read whole: %v, %q", err, out)
	}
	cmd := exec.Command(bin, "--frobnicate")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || strings.Count(stderr.String(), "\n") != 2 {
		t.Errorf("unknown flag: %v, stderr %q", err, stderr.String())
	}
}

// /var/log/ds01 is group-writable: a FIFO planted as the event log is
// refused, not waited on; one planted as an archive is skipped with a
// warning and the report goes on.
func TestPlantedFIFOsAreRefused(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "events.jsonl")
	if err := syscall.Mkfifo(log, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errb, rc := invoke([]string{"events", "--events-file", log}, false, nil); rc != 1 || !strings.Contains(errb, "not a regular file") {
		t.Errorf("events from a FIFO: exit %d, %q", rc, errb)
	}
	os.Remove(log)
	os.WriteFile(log, []byte{}, 0o644)
	if err := syscall.Mkfifo(log+"-20260101.gz", 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errb, rc := invoke([]string{"report", "--events-file", log, "--state-file", td("held.json")}, false, nil); rc != 0 || !strings.Contains(errb, "not a regular file") || !strings.Contains(errb, "skipped") {
		t.Errorf("report over a FIFO archive: exit %d, %q", rc, errb)
	}
}

// Flags go before or after the subcommand, as in git, docker and kubectl;
// the single-dash spellings of Go's flag package still work.
func TestFlagsAnywhere(t *testing.T) {
	same := [][][]string{
		{{"gpus", "--state-file", td("held.json")}, {"--state-file", td("held.json"), "gpus"}, {"-state-file", td("held.json"), "gpus"}, {"--state-file=" + td("held.json"), "gpus", "--color", "never"}},
		{{"--state-file", td("held.json"), "--all", "-q"}, {"-state-file", td("held.json"), "-all", "-q"}, {"-q", "--all", "--state-file", td("held.json")}},
		{{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "2026-01-01"},
			{"--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "report", "--since", "2026-01-01"},
			{"--since", "2026-01-01", "--events-file", td("report/events.jsonl"), "-state-file", td("held.json"), "report"}},
		{{"events", "--events-file", td("events.jsonl"), "--type", "detection"}, {"--type", "detection", "--events-file", td("events.jsonl"), "events"}},
	}
	for _, group := range same {
		want, wantErr, wantRC := invoke(group[0], false, nil)
		if wantRC != 0 || want == "" {
			t.Fatalf("%v: exit %d, %q %q", group[0], wantRC, want, wantErr)
		}
		for _, args := range group[1:] {
			if got, gotErr, rc := invoke(args, false, nil); got != want || gotErr != wantErr || rc != wantRC {
				t.Errorf("%v differs from %v:\n%s%s(exit %d)", args, group[0], got, gotErr, rc)
			}
		}
	}
	// A subcommand's own flag before it: not a value of the flag before.
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // --follow ends at once
	var out, errb bytes.Buffer
	e := env{stdout: &out, stderr: &errb, now: func() time.Time { return now }, getenv: func(string) string { return "" }, ctx: ctx}
	if rc := run([]string{"--follow", "events", "--events-file", td("events.jsonl"), "--limit", "1"}, e); rc != 0 || strings.Count(out.String(), "\n") != 2 {
		t.Errorf("--follow before events: exit %d, %q %q", rc, out.String(), errb.String())
	}
}

func TestWatchIntervals(t *testing.T) {
	for _, c := range []struct {
		args  []string
		every time.Duration
	}{
		{[]string{"--watch"}, 2 * time.Second},
		{[]string{"--watch", "5"}, 5 * time.Second},
		{[]string{"--watch", "5s"}, 5 * time.Second},
		{[]string{"--watch=2m"}, 2 * time.Minute},
		{[]string{"--watch=7"}, 7 * time.Second},
		{[]string{"-watch", "1h"}, time.Hour},
		{[]string{"--watch", "gpus"}, 2 * time.Second},
	} {
		rc := 0
		root := newRoot(env{stdout: io.Discard, stderr: io.Discard}, &rc)
		args := normalize(root, c.args)
		cmd, rest, err := root.Find(args)
		if err == nil {
			err = cmd.ParseFlags(rest)
		}
		if err != nil {
			t.Errorf("%v: %v", c.args, err)
			continue
		}
		w := cmd.Flags().Lookup("watch").Value.(*watchFlag)
		if !w.on || w.every != c.every {
			t.Errorf("%v (%v): on %v every %v, want %v", c.args, args, w.on, w.every, c.every)
		}
	}
	for _, bad := range [][]string{{"--watch=abc"}, {"--watch=0"}, {"--watch=-5s"}} {
		if _, errb, rc := invoke(append(bad, "--state-file", td("held.json")), false, nil); rc != 2 || strings.Count(errb, "\n") != 2 || !strings.Contains(errb, "interval") {
			t.Errorf("%v: exit %d, %q", bad, rc, errb)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-v"}} {
		out, errb, rc := invoke(args, false, nil)
		if rc != 0 || out != "ds01-workloads "+version+"\n" || errb != "" {
			t.Errorf("%v: exit %d, %q %q", args, rc, out, errb)
		}
	}
}

// -q is docker ps -q: container IDs only, so that
// docker stop $(ds01-workloads -q) is safe; --pids gives the host PIDs.
func TestQuietIsContainerIDsOnly(t *testing.T) {
	out, _, rc := invoke([]string{"--state-file", td("held.json"), "-q", "--all"}, false, nil)
	ids := strings.Fields(out)
	if rc != 0 || len(ids) == 0 {
		t.Fatalf("exit %d, %q", rc, out)
	}
	for _, id := range ids {
		if !regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(id) {
			t.Errorf("-q printed %q", id)
		}
	}
	out, _, rc = invoke([]string{"--state-file", td("held.json"), "--pids", "--all"}, false, nil)
	if rc != 0 || strings.Join(strings.Fields(out), " ") != "7001 7002 7003 8001" {
		t.Errorf("--pids: exit %d, %q", rc, out)
	}
}

// Errors instead of empty answers: one line (two for usage errors) and a
// non-zero exit.
func TestErrorsInsteadOfEmptyAnswers(t *testing.T) {
	for _, c := range []struct {
		args []string
		rc   int
		msg  string
	}{
		{[]string{"--state-file", td("held.json"), "--gpu", "7"}, 1, "--gpu 7: this host has no GPU 7 (5 GPUs: 0-4)"},
		{[]string{"gpus", "--state-file", td("held.json"), "--gpu", "9"}, 1, "no GPU 9"},
		{[]string{"report", "--events-file", td("report/events.jsonl"), "--state-file", td("held.json"), "--since", "1h", "--until", "2h"}, 2, "--until 2h is before --since 1h"},
		{[]string{"events", "--events-file", td("events.jsonl"), "--since", "2026-02-04", "--until", "2026-02-03"}, 2, "is before --since"},
		{[]string{"--state-file", td("held.json"), "--wide", "--stats", "--docker-host", "unix://" + filepath.Join(t.TempDir(), "none.sock")}, 1, "--stats: Docker is unreachable"},
	} {
		out, errb, rc := invoke(c.args, false, nil)
		if rc != c.rc || !strings.Contains(errb, c.msg) || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", c.args, rc, out, errb)
		}
		if lines := strings.Count(errb, "\n"); lines > 2 || (c.rc == 1 && lines != 1) {
			t.Errorf("%v: %d lines on stderr", c.args, lines)
		}
	}
	// A GPU the host has, with nobody on it, is an empty answer.
	if _, _, rc := invoke([]string{"--state-file", td("held.json"), "--gpu", "4", "--type", "raw-docker"}, false, nil); rc != 0 {
		t.Errorf("--gpu 4: exit %d", rc)
	}
}

// The table fits the terminal: NAME and IMAGE shrink first, with …; no
// line is wider than the terminal; --no-trunc turns it off.
func TestFitsTheTerminal(t *testing.T) {
	views := [][]string{
		{"--state-file", td("held.json")},
		{"--state-file", td("held.json"), "--all", "--wide"},
		{"--state-file", td("held.json"), "--by-user"},
		{"gpus", "--state-file", td("held.json")},
		{"--state-file", td("full.json"), "--all"},
		{"events", "--events-file", td("events.jsonl")},
	}
	for _, width := range []int{40, 60, 80, 120} {
		for _, args := range views {
			var out, errb bytes.Buffer
			e := env{stdout: &out, stderr: &errb, now: func() time.Time { return now }, getenv: func(string) string { return "" }, isTTY: true, width: width, ctx: context.Background()}
			if rc := run(append(args, "--color", "never"), e); rc != 0 {
				t.Fatalf("%v: exit %d %s", args, rc, errb.String())
			}
			for _, l := range strings.Split(out.String(), "\n") {
				if n := len([]rune(l)); n > width && args[0] != "events" {
					t.Errorf("%d columns, %v: a line of %d:\n%s", width, args, n, l)
				}
			}
		}
	}
	var out bytes.Buffer
	e := env{stdout: &out, stderr: io.Discard, now: func() time.Time { return now }, getenv: func(string) string { return "" }, isTTY: true, width: 60, ctx: context.Background()}
	run([]string{"--state-file", td("held.json"), "--color", "never"}, e)
	if !strings.Contains(out.String(), "…") || !strings.Contains(out.String(), "TYPE") {
		t.Errorf("60 columns:\n%s", out.String())
	}
	out.Reset()
	run([]string{"--state-file", td("held.json"), "--color", "never", "--no-trunc"}, e)
	if !strings.Contains(out.String(), "podman:999999999999 python serve.py") {
		t.Errorf("--no-trunc in 60 columns:\n%s", out.String())
	}
}

// Off a terminal, --watch prints snapshots with no screen control codes.
func TestWatchOffATerminal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	var out, errb bytes.Buffer
	e := env{stdout: &out, stderr: &errb, now: time.Now, getenv: func(string) string { return "" }, ctx: ctx}
	if rc := run([]string{"--state-file", td("held.json"), "--watch", "1"}, e); rc != 0 {
		t.Fatalf("exit %d", rc)
	}
	if strings.Contains(out.String(), "\x1b") || strings.Count(out.String(), "vsc-bob-proj-1234") < 2 {
		t.Errorf("--watch off a terminal:\n%q", out.String())
	}
}

func TestEventDetailsAsKeyValues(t *testing.T) {
	for raw, want := range map[string]string{
		`{"pid":7001,"cmdline":"python train.py","ok":true,"gpus":["0","1"],"e":""}`: `pid=7001 cmdline="python train.py" ok=true gpus=["0","1"] e=""`,
		`{"b":"x","a":{"k": 1}}`: `b=x a={"k":1}`,
		`[1,2]`:                  `[1,2]`,
	} {
		if got := report.KeyValues([]byte(raw)); got != want {
			t.Errorf("%s: %s, want %s", raw, got, want)
		}
	}
}

// Only files named as logrotate names archives are read: a planted
// events.jsonl-2020.gz.txt is not, and a FIFO named events.jsonl-x does
// not fail the report.
func TestReportReadsOnlyLogrotateArchives(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "events.jsonl")
	exit := func(user string, held int) string {
		return `{"timestamp":"2026-02-04T10:00:00Z","event_type":"detection.container_exited","schema_version":"1","user":"` + user +
			`","details":{"container_id":"` + strings.Repeat(user[:1], 12) + `","gpu_held_seconds":` + fmt.Sprint(held) + `}}` + "\n"
	}
	os.WriteFile(log, []byte(exit("alice", 60)), 0o644)
	os.WriteFile(log+"-20260201", []byte(exit("bob", 120)), 0o644)
	os.WriteFile(log+".1", []byte(exit("carol", 180)), 0o644)
	os.WriteFile(log+"-2020.gz.txt", []byte(exit("mallory", 360000)), 0o644)
	os.WriteFile(log+".bak", []byte(exit("mallory", 360000)), 0o644)
	if err := syscall.Mkfifo(log+"-x", 0o644); err != nil {
		t.Fatal(err)
	}
	out, errb, rc := invoke([]string{"report", "--events-file", log, "--state-file", filepath.Join(dir, "none.json"), "--since", "2026-01-01", "--csv"}, false, nil)
	if rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb)
	}
	for _, want := range []string{"alice,1,", "bob,1,", "carol,1,"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "mallory") {
		t.Errorf("a file not named as an archive was read:\n%s", out)
	}
}

// CSV cells a spreadsheet would run as formulas get a leading ' (OWASP).
func TestReportCSVDefusesFormulas(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "events.jsonl")
	exit := func(user, id string) string {
		return `{"timestamp":"2026-02-04T10:00:00Z","event_type":"detection.container_exited","schema_version":"1","user":` + fmt.Sprintf("%q", user) +
			`,"details":{"container_id":"` + id + `","gpu_held_seconds":60}}` + "\n"
	}
	line := exit(`=cmd|' /C calc'!A0`, "aaaaaaaaaaaa") + exit(`@SUM(1+1)*cmd|' /C calc'!A0`, "bbbbbbbbbbbb")
	os.WriteFile(log, []byte(line), 0o644)
	out, errb, rc := invoke([]string{"report", "--events-file", log, "--state-file", filepath.Join(dir, "none.json"), "--since", "2026-01-01", "--csv"}, false, nil)
	if rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb)
	}
	if !strings.Contains(out, "\n'=cmd|' /C calc'!A0,") || !strings.Contains(out, "\n'@SUM(1+1)*cmd|' /C calc'!A0,") {
		t.Errorf("formula cell not defused:\n%s", out)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if strings.ContainsAny(l[:1], "=+-@\t\r") {
			t.Errorf("a cell starts a formula: %q", l)
		}
	}
	for _, c := range []string{"=1", "+1", "-1", "@x", "\tx", "\rx"} {
		if got := report.CSVCell(c); got != "'"+c {
			t.Errorf("CSVCell(%q) = %q", c, got)
		}
	}
	if got := report.CSVCell("alice"); got != "alice" {
		t.Errorf("CSVCell(alice) = %q", got)
	}
}

// --format prints fields escaped as the table prints them: a container
// named with an escape sequence does not reach the terminal raw.
func TestFormatEscapesAsTheTableDoes(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.json")
	body := `{"schema_version": 2, "last_scan": "2026-02-04T10:30:00Z", "containers": {"abc123def456": {"id": "abc123def456",
		"name": "x\u001b[2J\u001b]0;pwned\u0007\u202ey", "user": "alice", "status": "running", "origin": "raw-docker", "image": "img\u0085"}}}`
	if err := os.WriteFile(state, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errb, rc := invoke([]string{"--state-file", state, "--all", "--format", "{{.Name}} {{.Image}} {{.User}}"}, false, nil)
	if rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb)
	}
	if strings.ContainsAny(out, "\x1b\x07\u202e\u0085") {
		t.Fatalf("raw control characters in --format output: %q", out)
	}
	if want := `x\x1b[2J\x1b]0;pwned\a\u202ey img\u0085 alice` + "\n"; out != want {
		t.Errorf("--format output %q, want %q", out, want)
	}
}

// events --follow reads what was appended in bounded chunks: a huge
// append (a 3 MB line, then events) is skipped, and the events after it
// are printed.
func TestFollowReadsInChunks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	os.WriteFile(path, nil, 0o644)
	var out testutil.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		report.Follow(ctx, path, 0, report.EventFilter{}, &report.EventPrinter{Out: &out, JSON: true}, 20*time.Millisecond)
		close(done)
	}()
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	huge := `{"timestamp":"2026-02-04T10:00:00Z","event_type":"detection.container_exited","user":"mallory","details":{"x":"` + strings.Repeat("A", 3<<20) + `"}}` + "\n"
	f.WriteString(huge + `{"timestamp":"2026-02-04T10:01:00Z","event_type":"detection.container_exited","user":"carol"}` + "\n")
	f.Close()
	testutil.Poll(10*time.Second, func() bool { return strings.Contains(out.String(), "carol") })
	cancel()
	<-done
	if s := out.String(); !strings.Contains(s, "carol") || strings.Contains(s, "mallory") {
		t.Errorf("followed:\n%.300s", s)
	}
}

// The man page's OPTIONS come from the command tree: every flag of every
// view is there.
func TestManOptionsListEveryFlag(t *testing.T) {
	out, _, rc := invoke([]string{"__man-options"}, false, nil)
	if rc != 0 {
		t.Fatalf("exit %d", rc)
	}
	rc0 := 0
	root := newRoot(env{stdout: io.Discard, stderr: io.Discard}, &rc0)
	for _, c := range append(root.Commands(), root) {
		if c.Hidden || c.Name() == "completion" || c.Name() == "help" {
			continue
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden && f.Name != "help" && f.Name != "version" && !strings.Contains(out, "**--"+f.Name+"**") {
				t.Errorf("%s --%s is not in the man page's options", c.Name(), f.Name)
			}
		})
	}
	for _, h := range []string{"## ds01-workloads report", "## ds01-workloads events", "**-q**, **--quiet**", "**--watch**[=*2s*]"} {
		if !strings.Contains(out, h) {
			t.Errorf("no %q in:\n%s", h, out)
		}
	}
}

// A host process whose command line could not be read says why.
func TestUnreadableCommandLine(t *testing.T) {
	b, err := os.ReadFile(td("held.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	json.Unmarshal(b, &st)
	for _, p := range st["host_processes"].(map[string]any) {
		p := p.(map[string]any)
		if p["pid"].(float64) == 7001 {
			p["cmdline"], p["cmdline_error"] = "", "permission denied"
		}
		if p["pid"].(float64) == 7002 {
			p["cmdline"] = ""
		}
	}
	b, _ = json.Marshal(st)
	path := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(path, b, 0o644)
	out, _, rc := invoke([]string{"--state-file", path, "--type", "host-process"}, false, nil)
	if rc != 0 || !strings.Contains(out, "(unreadable: permission denied)") || !strings.Contains(out, "(unreadable: no command line recorded)") {
		t.Errorf("exit %d:\n%s", rc, out)
	}
}
