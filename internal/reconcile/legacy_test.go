package reconcile

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// A state file the Python scanner wrote: host processes keyed by PID, with
// neither start_time nor uid, and raw command lines.
const legacyState = `{
  "last_scan": "2026-03-01T11:59:30.000000Z",
  "containers": {},
  "host_processes": {
    "2001": {"pid": 2001, "user": "bob", "cmdline": "python train.py --token=abc123", "gpu_memory_mb": 512, "gpu_uuid": "GPU-0", "detected_at": "2026-03-01T10:00:00.000000Z"},
    "2002": {"pid": 2002, "user": "unknown", "cmdline": "python eval.py", "gpu_memory_mb": 512, "gpu_uuid": "GPU-0", "detected_at": "2026-03-01T10:05:00.000000Z"},
    "2003": {"pid": 2003, "user": "bob", "cmdline": "python old-job.py", "gpu_memory_mb": 512, "gpu_uuid": "GPU-0", "detected_at": "2026-03-01T10:10:00.000000Z"},
    "2004": {"pid": 2004, "user": "alice", "cmdline": "python train.py", "gpu_memory_mb": 512, "gpu_uuid": "GPU-0", "detected_at": "2026-03-01T10:15:00.000000Z"},
    "2005": {"pid": 2005, "user": "bob", "cmdline": "python train.py", "gpu_memory_mb": 512, "gpu_uuid": "GPU-0", "detected_at": "2026-03-01T10:20:00.000000Z"}
  },
  "_pending_processes": {
    "2006": {"pid": 2006, "user": "bob", "cmdline": "python train.py", "gpu_memory_mb": 512, "gpu_uuid": "GPU-0"}
  }
}`

// The first cycle on a reference-written state: each entry whose PID runs
// now with the same user and command line is the same process (no event,
// detected_at kept); a PID now running something else, or as someone
// else, is an exit and a new pending process; a legacy pending process
// seen again is confirmed (its second sighting) with one discovery.
func TestSwitchOverFromTheReference(t *testing.T) {
	prev, err := inventory.Parse([]byte(legacyState))
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	s := step{procs: []gpuProc{
		{pid: 2001, start: 501, argv: []string{"python", "train.py", "--token=abc123"}}, // recorded masked, matched raw
		{pid: 2002, start: 502, uid: 4321, argv: []string{"python", "eval.py"}},         // unresolved UID: "unknown" then, "4321" now
		{pid: 2003, start: 503, argv: []string{"python", "new-job.py"}},                 // PID reused by another command
		{pid: 2004, start: 504}, // PID reused by another user (bob, not alice)
		// 2005 is gone.
		{pid: 2006, start: 506},
	}}
	before, _ := json.Marshal(prev)
	res := Reconcile(prev, s.facts(now), Rules{Excluded: DefaultExcluded})
	got := describe(res.Transitions)
	want := []string{
		"host_gpu_process_discovered 2006",
		"host_gpu_process_exited 2003@0",
		"host_gpu_process_exited 2004@0",
		"host_gpu_process_exited 2005@0",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("transitions %q, want %q", got, want)
	}
	if after, _ := json.Marshal(prev); string(before) != string(after) {
		t.Fatal("Reconcile changed its input")
	}
	st := res.State
	for pid, detected := range map[string]string{"2001": "2026-03-01T10:00:00Z", "2002": "2026-03-01T10:05:00Z"} {
		p, ok := st.HostProcesses[pid]
		if !ok {
			t.Fatalf("%s not confirmed: %+v", pid, st.PendingProcesses[pid])
		}
		if p.DetectedAt == nil || !p.DetectedAt.Equal(mustTime(t, detected)) {
			t.Errorf("%s: detected_at %v, want %s (kept)", pid, p.DetectedAt, detected)
		}
		if p.StartTime == 0 || p.FirstSeen == nil {
			t.Errorf("%s: no identity taken over: start_time %d first_seen %v", pid, p.StartTime, p.FirstSeen)
		}
	}
	if p := st.HostProcesses["2001"]; p.Cmdline == "python train.py --token=abc123" {
		t.Errorf("the secret in the reference's command line was kept: %q", p.Cmdline)
	}
	for _, pid := range []string{"2003", "2004"} {
		if _, ok := st.PendingProcesses[pid]; !ok {
			t.Errorf("%s: the new process behind a reused PID is not pending", pid)
		}
	}
	// The next cycle is an ordinary one: the same processes; 2006 exits,
	// and the two new processes behind reused PIDs, gone unconfirmed, reach
	// the log in their users' aggregates.
	s.procs = s.procs[:2]
	res = Reconcile(st, s.facts(now.Add(30*time.Second)), Rules{Excluded: DefaultExcluded})
	want = []string{"host_gpu_process_exited 2006@506", "short_gpu_processes bob x2"}
	if got := describe(res.Transitions); !reflect.DeepEqual(got, want) {
		t.Fatalf("second cycle: transitions %q, want %q", got, want)
	}
}

// This daemon's own entries carry a start time: a PID reused by the same
// user and command line is still a new process.
func TestOwnEntriesAreNotAdopted(t *testing.T) {
	s := step{procs: []gpuProc{{pid: 3001, start: 7}}}
	st := inventory.Empty()
	for i := 0; i < 2; i++ {
		st = Reconcile(st, s.facts(t0.Add(time.Duration(i)*30*time.Second)), Rules{}).State
	}
	s.procs[0].start = 8
	res := Reconcile(st, s.facts(t0.Add(time.Minute)), Rules{})
	if got, want := describe(res.Transitions), []string{"host_gpu_process_exited 3001@7"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("transitions %q, want %q", got, want)
	}
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A reference entry that exits logs its command line masked, as this
// daemon would have recorded it.
func TestLegacyExitIsMasked(t *testing.T) {
	prev, err := inventory.Parse([]byte(legacyState))
	if err != nil {
		t.Fatal(err)
	}
	res := Reconcile(prev, step{}.facts(t0), Rules{})
	for _, tr := range res.Transitions {
		if d, ok := tr.Details.(event.HostProcessExitedDetails); ok && strings.Contains(d.Cmdline, "abc123") {
			t.Errorf("exit of %d logs the secret: %q", d.Pid, d.Cmdline)
		}
	}
	if len(res.Transitions) != 5 {
		t.Errorf("%d transitions, want 5 exits", len(res.Transitions))
	}
}
