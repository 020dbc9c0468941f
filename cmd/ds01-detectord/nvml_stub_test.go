//go:build integration

package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
)

// The real daemon, a real container on a private dockerd, and a stand-in
// NVML library (loaded with --nvml-library) that reports the container's
// process with a scripted utilisation: idle, then busy, then removed. The
// state, the events, the metrics and the counters in the exited event must
// tell that story, each transition once.
func TestUtilizationEndToEnd(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	id, err := d.Create(ctx, dockertest.Spec{Name: "notebook", Labels: map[string]string{"ds01.user": "alice"}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	js, err := d.Client.ContainerInspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	pid := js.State.Pid
	lib, ctl := stubNVML(t)
	script(t, ctl, pid, 70000, "0") // 70 GB held, idle
	f := newFiles(t, t.TempDir())
	addr := freeAddr(t)
	p := startDaemonEnv(t, []string{"DS01_NVML_STUB=" + ctl}, f.args("--docker-host", d.Host, "--nvml-library", lib,
		"--interval", "250ms", "--gpu-idle-after", "1s", "--gpu-idle-threshold", "5", "--web.listen-address", addr)...)
	short := id[:12]
	count := func(typ string) int {
		n := 0
		for _, e := range f.Events() {
			if e.EventType == typ {
				n++
			}
		}
		return n
	}
	testutil.Eventually(t, 15*time.Second, "gpu_idle", func() bool { return count(event.GPUIdle) == 1 })
	st := f.State()
	c := st.Containers[short]
	if len(c.GPUProcesses) != 1 || c.GPUProcesses[0].Pid != pid || c.GPUProcesses[0].SMUtilPercent == nil || *c.GPUProcesses[0].SMUtilPercent != 0 ||
		!c.GPUIdle || c.GPUIdleSince == nil || c.GPUMemoryMB == nil || *c.GPUMemoryMB != 70000 {
		t.Fatalf("idle container: %+v", c)
	}
	if g := st.GPUs["GPU-57ab0000-0000-0000-0000-000000000000"]; g.Name != "Stand-in GPU" || g.UtilizationPercent == nil || *g.UtilizationPercent != 0 {
		t.Errorf("gpus: %+v", st.GPUs)
	}
	testutil.Eventually(t, 5*time.Second, "idle seconds in the metrics", func() bool {
		v, ok := metric(t, addr, "ds01_workload_gpu_idle_seconds")
		return ok && v >= 1
	})
	var idleSince, idleAt time.Time
	for _, e := range f.Events() {
		if e.EventType == event.GPUIdle {
			dd := testutil.Details(t, e)
			if e.User != "alice" || dd["container_id"] != short || dd["gpu_memory_mb"] != 70000.0 || dd["threshold_percent"] != 5.0 {
				t.Errorf("gpu_idle: user %q details %s", e.User, e.Details)
			}
			idleSince, _ = time.Parse(time.RFC3339Nano, dd["idle_since"].(string))
			idleAt = e.Timestamp.Time
			// On the daemon's own timeline: not before --gpu-idle-after.
			if d := e.Timestamp.Sub(idleSince); d < time.Second {
				t.Errorf("gpu_idle %v after idle_since, before --gpu-idle-after", d)
			}
		}
	}

	script(t, ctl, pid, 70000, "85") // back to work
	testutil.Eventually(t, 5*time.Second, "gpu_active", func() bool { return count(event.GPUActive) == 1 })
	testutil.Eventually(t, 5*time.Second, "utilisation in the metrics", func() bool {
		v, ok := metric(t, addr, "ds01_workload_gpu_utilization_ratio")
		return ok && v == 0.85
	})
	testutil.Eventually(t, 5*time.Second, "some busy time", func() bool { return f.State().Containers[short].GPUBusySeconds > 0 })
	var activeAt time.Time
	for _, e := range f.Events() {
		if e.EventType == event.GPUActive {
			activeAt = e.Timestamp.Time
		}
	}
	// Held time is integrated at samples, and gpu_active is stamped by
	// the scan after the sample that saw the work: wait until the state
	// has held time up to the gpu_active stamp (a sample after it), so
	// the exit counters below have a lower bound that does not depend on
	// when the removal lands between samples.
	heldMin := activeAt.Sub(idleSince).Seconds()
	var heldSeen float64
	testutil.Eventually(t, 30*time.Second, "held time up to gpu_active", func() bool { // a hang guard: samples come every second
		heldSeen = f.State().Containers[short].GPUHeldSeconds
		return heldSeen >= heldMin
	})
	if err := d.Client.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "container_exited", func() bool { return count(event.ContainerExited) == 1 })
	var exited map[string]any
	var exitAt time.Time
	for _, e := range f.Events() {
		if e.EventType == event.ContainerExited {
			exited, exitAt = testutil.Details(t, e), e.Timestamp.Time
		}
	}
	held, busy, alloc := exited["gpu_held_seconds"].(float64), exited["gpu_busy_seconds"].(float64), exited["gpu_allocated_seconds"].(float64)
	// On the daemon's own timeline (event timestamps, not the test's
	// clock): the process was held from idle_since until at least the
	// gpu_active cycle (the state showed that much before the removal,
	// and counters never go back) and at most until the exit; it was
	// busy only in cycles after the gpu_idle one.
	heldMax := exitAt.Sub(idleSince).Seconds()
	busyMax := exitAt.Sub(idleAt).Seconds()
	if held < heldSeen || held > heldMax+0.001 || busy <= 0 || busy > busyMax+0.001 || busy > held || alloc != 0 {
		t.Errorf("exited counters: held %.3f (want %.3f to %.3f; %.3f by gpu_active) busy %.3f (want up to %.3f) allocated %.3f",
			held, heldSeen, heldMax, heldMin, busy, busyMax, alloc)
	}
	if v, ok := metric(t, addr, `ds01_user_gpu_held_seconds_total`); !ok || v < held-1 {
		t.Errorf("ds01_user_gpu_held_seconds_total = %v, want about %v", v, held)
	}
	p.waitScans(t, 3) // nothing repeats
	if count(event.GPUIdle) != 1 || count(event.GPUActive) != 1 {
		t.Errorf("gpu_idle %d, gpu_active %d: want one each", count(event.GPUIdle), count(event.GPUActive))
	}
	if strings.Contains(p.log(), "panic") {
		t.Errorf("daemon log:\n%s", p.log())
	}
}
