package cycle

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/gpu/gputest"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
)

// Scripted utilisation through go-nvml's dgxh100 mock, a real scanner and
// real files, with the fixture /proc (1002 runs in container aaaa…, whose
// init is 1033; 1020 is a host process): busy, idle, busy; a PID with no
// samples; NOT_FOUND; NOT_SUPPORTED; MIG; and a restart in the middle of
// an idle period.
func TestUtilizationThroughTheMock(t *testing.T) {
	srv := gputest.H100()
	ok := nvml.SUCCESS
	dockerA := strings.Repeat("a", 64)
	ctr := facts.Container{ID: dockerA, Name: "a", Status: "running", Pid: 1033, Labels: map[string]string{"ds01.user": "alice"}}
	gputest.SetProcs(srv, 0, []nvml.ProcessInfo{gputest.Proc(1002, 2048)}, nil) // container, GPU 0
	gputest.SetProcs(srv, 1, []nvml.ProcessInfo{gputest.Proc(1020, 1024)}, nil) // host process, GPU 1
	gputest.SetProcs(srv, 2, []nvml.ProcessInfo{gputest.Proc(1022, 512)}, nil)  // host process, GPU 2: NOT_SUPPORTED
	gputest.SetUtil(srv, 2, gputest.Util{Ret: nvml.ERROR_NOT_SUPPORTED})
	gputest.SetMIG(srv, 3, gputest.MIG{UUID: gputest.MIGUUID(3, 0), GI: 1, Compute: []nvml.ProcessInfo{gputest.Proc(1031, 700)}})
	files := testutil.NewFiles(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ts := uint64(1)
	newScanner := func() *Scanner {
		return New(Config{
			Files: deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}, Docker: listed{Containers: []*facts.Container{&ctr}},
			GPU: gpu.New(gputest.NewGuard(t, srv, &ok), nil), Proc: proc.New(filepath.Join("..", "source", "proc", "testdata", "proc")),
			Rules: reconcile.Rules{Excluded: reconcile.DefaultExcluded, IdleThreshold: 5, IdleAfter: time.Minute}, Now: func() time.Time { return now },
		}, nil)
	}
	s := newScanner()
	// busy (container 90 %, host 30 %), idle (container has no sample: 0),
	// NOT_FOUND (nobody had samples), ..., busy again.
	script := []struct {
		gpu0, gpu1 *nvml.Return // nil: samples below
		c, h       uint32
		restart    bool
	}{
		{c: 90, h: 30}, {c: 90, h: 30}, // 0, 1
		{c: 0, h: 30}, // 2: container's only sample is 0
		{gpu0: &[]nvml.Return{nvml.ERROR_NOT_FOUND}[0], h: 30},                // 3: no samples at all on GPU 0
		{gpu0: &[]nvml.Return{nvml.ERROR_NOT_FOUND}[0], h: 30, restart: true}, // 4: idle for 60 s → gpu_idle; then a restart
		{gpu0: &[]nvml.Return{nvml.ERROR_NOT_FOUND}[0], h: 30},                // 5: still idle, no second event
		{c: 70, h: 30}, // 6: gpu_active
	}
	var idles, actives int
	for i, step := range script {
		if step.gpu0 != nil {
			gputest.SetUtil(srv, 0, gputest.Util{Device: 0, Ret: *step.gpu0})
		} else {
			ts += 10
			// A low sample before the burst: the burst counts.
			gputest.SetUtil(srv, 0, gputest.Util{Device: step.c, Samples: []nvml.ProcessUtilizationSample{gputest.Sample(1002, ts, step.c/2), gputest.Sample(1002, ts+1, step.c)}})
		}
		ts += 10
		gputest.SetUtil(srv, 1, gputest.Util{Device: step.h, Samples: []nvml.ProcessUtilizationSample{gputest.Sample(1020, ts, step.h)}})
		sum := s.Scan(context.Background(), true)
		idles += sum.EventCounts[event.GPUIdle]
		actives += sum.EventCounts[event.GPUActive]
		st := sum.State
		c := st.Containers[dockerA[:12]]
		if len(c.GPUProcesses) != 1 || c.GPUProcesses[0].SMUtilPercent == nil {
			t.Fatalf("cycle %d: container GPU processes %+v", i, c.GPUProcesses)
		}
		wantC := int(step.c)
		if step.gpu0 != nil {
			wantC = 0
		}
		if got := *c.GPUProcesses[0].SMUtilPercent; got != wantC {
			t.Errorf("cycle %d: container process at %d %%, want %d", i, got, wantC)
		}
		hp := st.PendingProcesses["1020"]
		if i > 0 {
			hp = st.HostProcesses["1020"]
		}
		if hp.SMUtilPercent == nil || *hp.SMUtilPercent != 30 {
			t.Errorf("cycle %d: host process 1020: %+v", i, hp.SMUtilPercent)
		}
		for _, pid := range []string{"1022", "1031"} { // NOT_SUPPORTED and MIG: unknown
			p, found := st.HostProcesses[pid]
			if !found {
				p = st.PendingProcesses[pid]
			}
			if p.SMUtilPercent != nil || p.GPUIdle || p.GPUIdleSince != nil {
				t.Errorf("cycle %d: pid %s should be unknown: %+v", i, pid, p)
			}
		}
		if g := st.GPUs[c.GPUProcesses[0].GPUUUID]; g.Name == "" || g.UtilizationPercent == nil {
			t.Errorf("cycle %d: gpus map: %+v", i, g)
		}
		now = now.Add(30 * time.Second)
		if step.restart {
			s = newScanner()
		}
	}
	if idles != 1 || actives != 1 {
		t.Errorf("%d gpu_idle and %d gpu_active events, want 1 and 1", idles, actives)
	}
	evs := files.Events()
	var idleEv event.Envelope
	for _, e := range evs {
		if e.EventType == event.GPUIdle {
			idleEv = e
		}
	}
	if d := testutil.Details(t, idleEv); idleEv.User != "alice" || d["container_id"] != dockerA[:12] || d["threshold_percent"] != 5.0 || d["gpu_memory_mb"] != 2048.0 {
		t.Errorf("gpu_idle event: %s %s", idleEv.User, idleEv.Details)
	}
	st := files.State()
	c := st.Containers[dockerA[:12]]
	// 6 intervals of 30 s, one GPU held, less the one after the restart
	// (a new sampler has no sample before its first): 150 s; busy in
	// cycles 1 and 6.
	if c.GPUHeldSeconds != 150 || c.GPUBusySeconds != 60 || c.GPUAllocatedSeconds != 0 {
		t.Errorf("container counters: held %v busy %v allocated %v", c.GPUHeldSeconds, c.GPUBusySeconds, c.GPUAllocatedSeconds)
	}
}
