package main

import (
	"os"
	"os/exec"
	osuser "os/user"
	"strconv"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/testutil"
)

// The real daemon at --interval 1h, with the stand-in NVML and no Docker:
// the GPU sampler (here every 200 ms) sees a new host process and the
// state file has it without a reconciliation scan (the only one before
// the next hour is the first); a process
// that ends before --gpu-confirm-after is charged to its user (state's
// _short_processes and the per-user counter) without events of its own.
func TestSamplerReachesTheStateBetweenScans(t *testing.T) {
	lib, ctl := stubNVML(t)
	noProcs := func() {
		if err := os.WriteFile(ctl, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	noProcs()
	f := newFiles(t, t.TempDir())
	addr := freeAddr(t)
	startDaemonEnv(t, []string{"DS01_NVML_STUB=" + ctl}, f.args("--docker-host", "unix:///nonexistent/docker.sock", "--nvml-library", lib,
		"--interval", "1h", "--gpu-interval", "200ms", "--gpu-confirm-after", "10s", "--web.listen-address", addr)...)
	testutil.Eventually(t, 10*time.Second, "first state", func() bool {
		_, err := os.Stat(f.StatePath)
		return err == nil
	})
	p := exec.Command("sleep", "600")
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Process.Kill(); p.Wait() })
	pid := strconv.Itoa(p.Process.Pid)
	script(t, ctl, p.Process.Pid, 100, "90")
	listed := time.Now()
	// Only the sampler can put it there within the hour; the limit is a
	// hang guard (the bench measures the latency).
	testutil.Eventually(t, 30*time.Second, "pending in the state", func() bool {
		_, ok := f.State().PendingProcesses[pid]
		return ok
	})
	t.Logf("in the state %v after NVML listed it", time.Since(listed).Round(time.Millisecond))
	// Listed for two seconds: held at least 0.8 s even if the sampler
	// stalls for a second on a busy machine.
	time.Sleep(2 * time.Second)
	noProcs()
	lived := time.Since(listed).Seconds() // on the GPU at most this long
	p.Process.Kill()
	p.Wait()
	user := strconv.Itoa(os.Getuid())
	if u, err := osuser.LookupId(user); err == nil {
		user = u.Username
	}
	testutil.Eventually(t, 30*time.Second, "the short process in its user's aggregate", func() bool {
		a, ok := f.State().ShortProcesses[user]
		return ok && a.Count == 1
	})
	t.Logf("aggregate in the state %v after NVML first listed the process", time.Since(listed).Round(time.Millisecond))
	// Held from its first sample to its last: about the two seconds it was
	// listed (it was listed at most `lived` seconds; samples every 50 ms
	// while it was young; the interval before its first sample counts from its start, up to 200 ms before it was listed).
	if a := f.State().ShortProcesses[user]; a.GPUHeldSeconds < 0.8 || a.GPUHeldSeconds > lived+0.25 {
		t.Errorf("short process held %.3f s, listed for %.3f s", a.GPUHeldSeconds, lived)
	}
	// The counter is added to after the state is written (the cycle's
	// metrics follow its delivery): it catches up within a moment.
	var held float64
	if !testutil.Poll(10*time.Second, func() bool {
		v, ok := metric(t, addr, "ds01_user_gpu_held_seconds_total")
		held = v
		return ok && v >= 0.8
	}) {
		t.Errorf("ds01_user_gpu_held_seconds_total = %v", held)
	}
	for _, e := range f.Events() {
		t.Errorf("event %s: the short process got an event of its own", e.EventType)
	}
}
