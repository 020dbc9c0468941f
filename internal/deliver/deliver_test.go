package deliver

import (
	"os"
	"strings"
	"testing"

	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

const (
	logged   = `{"timestamp":"2026-01-01T00:00:00Z","event_type":"detection.container_discovered","schema_version":"1","details":{"container_id":"aaaaaaaaaaaa"}}`
	unlogged = `{"timestamp":"2026-01-01T00:00:01Z","event_type":"detection.container_exited","schema_version":"1","details":{"container_id":"aaaaaaaaaaaa"}}`
)

// A restart appends the lines the last run recorded but did not log, once,
// and never a line that is not an event: the state file's directory is
// writable by others and the daemon appends as root.
func TestOpenRecoversUnloggedLinesOnce(t *testing.T) {
	f := testutil.NewFiles(t)
	if err := os.WriteFile(f.EventsPath, []byte(logged+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := inventory.Empty()
	st.UnloggedEvents = []string{logged, unlogged, "forged line\nwith a newline", `{"event_type":"x"}`}
	if err := statefile.Save(f.StatePath, st, ""); err != nil {
		t.Fatal(err)
	}
	log, lines := testutil.Logger()
	sink, loaded := Open(Config{StatePath: f.StatePath, EventsPath: f.EventsPath}, log)
	if loaded.UnloggedEvents != nil {
		t.Errorf("the loaded state still carries its unlogged lines")
	}
	if res := sink.Deliver(loaded, nil); res.StateErr != nil || res.AppendErr != nil || res.Pending != 0 {
		t.Fatalf("deliver: %+v", res)
	}
	b, _ := os.ReadFile(f.EventsPath)
	if string(b) != logged+"\n"+unlogged+"\n" {
		t.Errorf("event log:\n%s", b)
	}
	if !strings.Contains(lines(), `"dropped":2`) {
		t.Errorf("the dropped lines were not logged: %s", lines())
	}
	// A second start finds nothing left to append.
	sink, loaded = Open(Config{StatePath: f.StatePath, EventsPath: f.EventsPath}, nil)
	sink.Deliver(loaded, nil)
	if b2, _ := os.ReadFile(f.EventsPath); string(b2) != string(b) {
		t.Errorf("second start changed the log:\n%s", b2)
	}
}

// A SIGKILL can end the write(2) of a line part way (a line that crosses a
// page of the file): the next start cuts the fragment and appends the
// whole line once. A fragment that is not the start of one of its lines
// is another writer's and stays.
func TestOpenRepairsALineTornByAKill(t *testing.T) {
	for _, c := range []struct {
		name, log, want string
	}{
		{"ours", logged + "\n" + unlogged[:57], logged + "\n" + unlogged + "\n"},
		{"ours, the log's only bytes", unlogged[:3], unlogged + "\n"},
		{"someone else's", logged + "\n" + `{"event_type":"x`, logged + "\n" + `{"event_type":"x` + "\n" + unlogged + "\n"},
		{"whole", logged + "\n", logged + "\n" + unlogged + "\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := testutil.NewFiles(t)
			if err := os.WriteFile(f.EventsPath, []byte(c.log), 0o644); err != nil {
				t.Fatal(err)
			}
			st := inventory.Empty()
			st.UnloggedEvents = []string{unlogged}
			if err := statefile.Save(f.StatePath, st, ""); err != nil {
				t.Fatal(err)
			}
			log, lines := testutil.Logger()
			sink, loaded := Open(Config{StatePath: f.StatePath, EventsPath: f.EventsPath}, log)
			if res := sink.Deliver(loaded, nil); res.AppendErr != nil || res.Pending != 0 {
				t.Fatalf("deliver: %+v", res)
			}
			if b, _ := os.ReadFile(f.EventsPath); string(b) != c.want {
				t.Errorf("event log:\n%s\nwant:\n%s", b, c.want)
			}
			if cut := strings.Contains(lines(), "when it was killed; cut it"); cut != strings.HasPrefix(c.name, "ours") {
				t.Errorf("logged a cut: %v; journal: %s", cut, lines())
			}
			if ended := strings.Contains(lines(), "not this daemon's"); ended != (c.name == "someone else's") {
				t.Errorf("logged an ended fragment: %v; journal: %s", ended, lines())
			}
		})
	}
}

// Lines that cannot be appended stay in the state until they can.
func TestUnappendedLinesTravelInTheState(t *testing.T) {
	f := testutil.NewFiles(t)
	if err := os.Mkdir(f.EventsPath, 0o755); err != nil { // appending fails
		t.Fatal(err)
	}
	sink, st := Open(Config{StatePath: f.StatePath, EventsPath: f.EventsPath}, nil)
	res := sink.Deliver(st, [][]byte{[]byte(unlogged)})
	if res.AppendErr == nil || res.Pending != 1 || res.StateErr != nil {
		t.Fatalf("deliver: %+v", res)
	}
	if got := f.State().UnloggedEvents; len(got) != 1 || got[0] != unlogged {
		t.Fatalf("state carries %q", got)
	}
	os.Remove(f.EventsPath)
	if res := sink.Deliver(st, nil); res.AppendErr != nil || res.Pending != 0 {
		t.Fatalf("after the fix: %+v", res)
	}
	if evs := f.Events(); len(evs) != 1 || evs[0].EventType != "detection.container_exited" {
		t.Errorf("events: %+v", evs)
	}
}

// With the event log unwritable for good, the queue stops at its cap: the
// state file stays bounded, drops are counted and logged once.
func TestUnwritableLogQueueIsCapped(t *testing.T) {
	f := testutil.NewFiles(t)
	if err := os.Mkdir(f.EventsPath, 0o755); err != nil {
		t.Fatal(err)
	}
	log, lines := testutil.Logger()
	sink, st := Open(Config{StatePath: f.StatePath, EventsPath: f.EventsPath}, log)
	batch := make([][]byte, 400)
	for i := range batch {
		batch[i] = []byte(unlogged)
	}
	dropped := 0
	var res Result
	for i := 0; i < 40; i++ { // 16,000 lines
		res = sink.Deliver(st, batch)
		dropped += res.Dropped
	}
	if res.Pending != MaxPendingLines || dropped != 40*400-MaxPendingLines {
		t.Fatalf("pending %d, dropped %d", res.Pending, dropped)
	}
	if n := len(f.State().UnloggedEvents); n != MaxPendingLines {
		t.Errorf("state carries %d lines", n)
	}
	if n := strings.Count(lines(), "dropping the oldest"); n != 1 {
		t.Errorf("drops logged %d times, want once", n)
	}
	big := make([][]byte, 10)
	for i := range big {
		big[i] = make([]byte, MaxPendingBytes/4)
	}
	if res := sink.Deliver(st, big); res.Pending > MaxPendingLines || res.Dropped == 0 {
		t.Errorf("byte cap: %+v", res)
	}
}
