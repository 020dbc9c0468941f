package cycle

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/gpu/gputest"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// The switch-over from the Python scanner: its state file lists two host
// GPU processes that still run (fixture /proc: 1020 of an unresolvable
// UID, whose raw command line carries secrets, and 1032 of bob), keyed by
// PID, without start_time or uid. The first cycle, with go-nvml's dgxh100
// mock reporting both, must emit nothing and keep their detected_at.
func TestSwitchOverFromReferenceStateEmitsNothing(t *testing.T) {
	srv := gputest.H100()
	ok := nvml.SUCCESS
	gputest.SetProcs(srv, 1, []nvml.ProcessInfo{gputest.Proc(1020, 1024)}, nil)
	gputest.SetProcs(srv, 2, []nvml.ProcessInfo{gputest.Proc(1032, 2048)}, nil)
	files := testutil.NewFiles(t)
	reference := `{"last_scan": "2026-03-01T11:59:30.123456Z", "containers": {},
 "host_processes": {
  "1020": {"pid": 1020, "user": "unknown", "cmdline": "python3 serve.py --token=abc123 --password hunter2 HF_TOKEN=xyz --epochs 3", "gpu_memory_mb": 1024, "gpu_uuid": "` + gputest.Device(srv, 1).UUID + `", "detected_at": "2026-03-01T09:00:00.000001Z"},
  "1032": {"pid": 1032, "user": "bob", "cmdline": "/usr/bin/nvidia-persistenced --epochs 3", "gpu_memory_mb": 2048, "gpu_uuid": "` + gputest.Device(srv, 2).UUID + `", "detected_at": "2026-03-01T09:30:00.000000Z"}},
 "_pending_processes": {}}
`
	if err := os.WriteFile(files.StatePath, []byte(reference), 0o644); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := New(Config{
		Files: deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}, Docker: listed{},
		GPU: gpu.New(gputest.NewGuard(t, srv, &ok), nil), Proc: proc.New(filepath.Join("..", "source", "proc", "testdata", "proc")),
		Users: func(_ context.Context, uid uint32) (string, bool) {
			if uid == 1001 {
				return "bob", true
			}
			return "", false
		},
		Now: func() time.Time { return now },
	}, nil)
	sum := s.Scan(context.Background(), true)
	if sum.Events != 0 || len(sum.EventCounts) != 0 {
		t.Errorf("first cycle on the reference's state: %d events %v, want none", sum.Events, sum.EventCounts)
	}
	if b, _ := os.ReadFile(files.EventsPath); len(b) != 0 {
		t.Errorf("event log after the switch-over:\n%s", b)
	}
	for pid, detected := range map[string]string{"1020": "2026-03-01T09:00:00.000001Z", "1032": "2026-03-01T09:30:00Z"} {
		p, found := sum.State.HostProcesses[pid]
		if !found {
			t.Fatalf("%s is not a confirmed host process: %+v", pid, sum.State.PendingProcesses[pid])
		}
		want, _ := time.Parse(time.RFC3339Nano, detected)
		if p.DetectedAt == nil || !p.DetectedAt.Equal(want) || p.StartTime == 0 {
			t.Errorf("%s: detected_at %v (want %s), start_time %d", pid, p.DetectedAt, detected, p.StartTime)
		}
	}
	// Cycle two: the processes are gone; each exits once.
	gputest.SetProcs(srv, 1, nil, nil)
	gputest.SetProcs(srv, 2, nil, nil)
	now = now.Add(30 * time.Second)
	sum = s.Scan(context.Background(), true)
	if got := sum.EventCounts["detection.host_gpu_process_exited"]; got != 2 || sum.Events != 2 {
		t.Errorf("second cycle: %v, want two exits", sum.EventCounts)
	}
}
