package cycle

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/gpu/gputest"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
)

func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	c := exec.Command("sleep", "600")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	return c
}

// The sampler attributes a process the moment it first lists it: a real
// process that the mock NVML lists in two samples and that has exited
// before the next scan is still charged to its real user, in aggregate;
// the set changing is what triggers a scan; the scan takes every sample
// since the last one.
func TestSamplerAttributesAtFirstSighting(t *testing.T) {
	srv := gputest.H100()
	ok := nvml.SUCCESS
	a := startSleep(t)
	gputest.SetProcs(srv, 0, []nvml.ProcessInfo{gputest.Proc(a.Process.Pid, 100)}, nil)
	files := testutil.NewFiles(t)
	var clock atomic.Int64 // seconds after t0 on the sampler's clock
	t0 := time.Now()
	now := func() time.Time { return t0.Add(time.Duration(clock.Load()) * 100 * time.Millisecond) }
	user := strconv.Itoa(os.Getuid())
	s := New(Config{
		Files: deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}, Docker: listed{},
		GPU: gpu.New(gputest.NewGuard(t, srv, &ok), nil), Proc: proc.New("/proc"), Now: now,
		Rules: reconcile.Rules{Excluded: reconcile.DefaultExcluded, Interval: 30 * time.Second},
	}, nil)
	smp := s.Sampler()
	ctx := context.Background()
	s.Scan(ctx, true) // t0: a is first seen

	steps := []struct {
		setup   func()
		changed bool
	}{
		{func() {}, false}, // a again
		{func() { // a exits; b appears
			a.Process.Kill()
			a.Wait()
			b := startSleep(t)
			gputest.SetProcs(srv, 0, []nvml.ProcessInfo{gputest.Proc(b.Process.Pid, 100)}, nil)
		}, true},
		{func() {}, false},
	}
	for i, st := range steps {
		clock.Add(10) // one second
		st.setup()
		changed, young, err := smp.Sample(ctx)
		if err != nil || changed != st.changed || !young {
			t.Fatalf("sample %d: changed %v young %v err %v", i, changed, young, err)
		}
	}
	clock.Add(10)
	sum := s.Scan(ctx, false)
	st := sum.State
	if len(st.PendingProcesses) != 1 || len(st.HostProcesses) != 0 {
		t.Fatalf("after the scan: pending %v confirmed %v", st.PendingProcesses, st.HostProcesses)
	}
	agg, found := st.ShortProcesses[user]
	// a was seen from the first scan's sample (t0) to the first sample
	// (t0+1 s): one second, on GPU 0.
	if !found || agg.Count != 1 || agg.GPUHeldSeconds != 1 || len(agg.GPUUUIDs) != 1 {
		t.Fatalf("short processes of %s: %+v (all: %+v)", user, agg, st.ShortProcesses)
	}
	if got := sum.UserGPUSeconds[user].Held; got < 3.99 || got > 4.01 {
		// a: 1 s; b: from its first sample to the scan's: 2 s, plus the
		// interval before its first sighting from its start (it started
		// in real time at about t0, so the whole 1 s interval).
		t.Errorf("per-user held this scan: %v, want 4", got)
	}
	// Confirmed after --gpu-confirm-after (5 s) of samples, not scans.
	for i := 0; i < 3; i++ {
		clock.Add(10)
		smp.Sample(ctx)
	}
	clock.Add(10)
	sum = s.Scan(ctx, false)
	if len(sum.State.HostProcesses) != 1 || sum.EventCounts[event.HostProcessDiscovered] != 1 {
		t.Fatalf("b after 5 s of samples: confirmed %v, events %v", sum.State.HostProcesses, sum.EventCounts)
	}
	// The aggregate reaches the log once it is --interval old.
	clock.Add(300)
	s.Scan(ctx, true)
	var lines int
	for _, e := range files.Events() {
		if e.EventType == event.ShortProcesses {
			lines++
			if d := testutil.Details(t, e); e.User != user || d["count"] != 1.0 || d["gpu_held_seconds"] != 1.0 {
				t.Errorf("aggregate line: %s %s", e.User, e.Details)
			}
		}
	}
	if lines != 1 {
		t.Errorf("%d aggregate lines, want 1", lines)
	}
}
