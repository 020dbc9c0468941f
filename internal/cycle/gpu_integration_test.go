//go:build integration

package cycle

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/internal/report"
	"github.com/ds01/ds01-detectord/internal/source/docker"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/gpu/gputest"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/internal/userdb"
	"github.com/ds01/ds01-detectord/pkg/event"
)

const testUser = "ds01gputest"

// ensureUser creates a non-root test user known to NSS and returns its UID.
func ensureUser(t *testing.T) uint32 {
	t.Helper()
	if out, err := exec.Command("id", "-u", testUser).Output(); err == nil {
		uid, _ := strconv.Atoi(string(out[:len(out)-1]))
		return uint32(uid)
	}
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", testUser).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", testUser).Run() })
	out, err := exec.Command("id", "-u", testUser).Output()
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(string(out[:len(out)-1]))
	return uint32(uid)
}

// The mock NVML reports (a) the init process of a real container on the
// private dockerd and (b) a real host process of a non-root user; the
// state must attribute each to the right owner.
func TestGPUProcessesJoinTheRealWorld(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	cid, err := d.Create(ctx, dockertest.Spec{Name: "no-gpu-config", Labels: map[string]string{"ds01.user": "alice"}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	js, err := d.Client.ContainerInspect(ctx, cid)
	if err != nil {
		t.Fatal(err)
	}
	cpid := js.State.Pid

	uid := ensureUser(t)
	host := exec.Command("sleep", "600")
	host.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Process.Kill(); host.Wait() })
	hpid := host.Process.Pid

	srv := gputest.H100()
	gputest.SetProcs(srv, 0, []nvml.ProcessInfo{gputest.Proc(cpid, 2048)}, nil)
	gputest.SetProcs(srv, 1, []nvml.ProcessInfo{gputest.Proc(hpid, gputest.Unknown)}, nil)
	gputest.SetMIG(srv, 1, gputest.MIG{UUID: gputest.MIGUUID(1, 0), GI: 3, CI: 0, Compute: []nvml.ProcessInfo{gputest.Proc(hpid, 700)}})
	ok := nvml.SUCCESS
	guard := gputest.NewGuard(t, srv, &ok)
	uuid0, _ := srv.Devices[0].GetUUID()
	uuid1, _ := srv.Devices[1].GetUUID()

	src, err := docker.New(d.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	r := &rig{Files: testutil.NewFiles(t), t: t, src: src}
	r.det = New(Config{
		Files:  deliver.Config{StatePath: r.StatePath, EventsPath: r.EventsPath},
		Docker: src, GPU: gpu.New(guard, nil), Proc: proc.New("/proc"), Users: userdb.New(time.Minute).Lookup,
		Rules: reconcile.Rules{Excluded: reconcile.DefaultExcluded, ConfirmAfter: time.Nanosecond}, // confirmed at the second scan's sample
	}, nil)

	// Cycle 1: the container's process is attributed at once; the host
	// process is pending.
	r.cycle()
	st := r.State()
	c := st.Containers[cid[:12]]
	if len(c.GPUProcesses) != 1 || c.GPUProcesses[0].Pid != cpid || c.GPUProcesses[0].GPUUUID != uuid0 ||
		c.GPUMemoryMB == nil || *c.GPUMemoryMB != 2048 || !c.GPUWithoutAccess {
		t.Fatalf("container GPU use: %+v", c)
	}
	key := strconv.Itoa(hpid)
	pend, ok2 := st.PendingProcesses[key]
	if !ok2 || len(st.HostProcesses) != 0 || pend.FirstSeen == nil || pend.DetectedAt != nil {
		t.Fatalf("host process after one cycle: pending %+v, confirmed %+v", st.PendingProcesses, st.HostProcesses)
	}
	if _, ok := st.PendingProcesses[strconv.Itoa(cpid)]; ok {
		t.Fatal("container process listed as a host process")
	}
	for _, e := range r.NewEvents() {
		if e.EventType == event.HostProcessDiscovered {
			t.Fatal("host process discovered after one sighting")
		}
	}

	// Cycle 2: confirmed, detected_at is the first sighting.
	r.cycle()
	st = r.State()
	hp, ok2 := st.HostProcesses[key]
	if !ok2 || hp.User != testUser || hp.UID != uid || hp.Cmdline != "sleep 600" || hp.GPUUUID != uuid1 ||
		hp.MIG == nil || hp.MIG.UUID != gputest.MIGUUID(1, 0) || hp.MIG.GPUInstanceID != 3 || hp.GPUMemoryMB == nil || *hp.GPUMemoryMB != 700 {
		t.Fatalf("confirmed host process: %+v", hp)
	}
	if hp.DetectedAt == nil || !hp.DetectedAt.Equal(pend.FirstSeen.Time) {
		t.Errorf("detected_at %v, first seen %v", hp.DetectedAt, pend.FirstSeen)
	}
	evs := r.NewEvents()
	if len(evs) != 1 || evs[0].EventType != event.HostProcessDiscovered || evs[0].User != testUser {
		t.Fatalf("events: %+v", evs)
	}
	dd := testutil.Details(t, evs[0])
	if int(dd["pid"].(float64)) != hpid || dd["cmdline"] != "sleep 600" || dd["gpu_uuid"] != uuid1 || dd["gpu_memory_mb"].(float64) != 700 {
		t.Errorf("details: %v", dd)
	}

	// The GPU source fails: nothing is lost, no exited events.
	guard.FailCount = nvml.ERROR_UNKNOWN
	s := r.cycle()
	st = r.State()
	if s.GPUOK || st.Sources.GPU.OK || st.Sources.GPU.Error == "" {
		t.Fatalf("gpu source: %+v", st.Sources.GPU)
	}
	if _, ok := st.HostProcesses[key]; !ok || len(st.Containers[cid[:12]].GPUProcesses) != 1 {
		t.Fatal("GPU use forgotten while the GPU source failed")
	}
	if evs := r.NewEvents(); len(evs) != 0 {
		t.Fatalf("failing GPU source emitted %+v", evs)
	}

	// Back, and the host process ended: exactly one exited event.
	guard.FailCount = nvml.SUCCESS
	host.Process.Kill()
	host.Wait()
	gputest.SetProcs(srv, 1, nil, nil)
	gputest.SetMIG(srv, 1)
	r.cycle()
	evs = r.NewEvents()
	if len(evs) != 1 || evs[0].EventType != event.HostProcessExited || int(testutil.Details(t, evs[0])["pid"].(float64)) != hpid {
		t.Fatalf("after exit: %+v", evs)
	}
	if st := r.State(); len(st.HostProcesses) != 0 || !st.Sources.GPU.OK {
		t.Fatalf("state after exit: %+v", st.HostProcesses)
	}
}

func TestOnceWithoutGPUWritesContainers(t *testing.T) {
	// On this GPU-less machine the real NVML fails to load; the cycle still
	// writes the containers and reports the GPU source as failed.
	d := dockertest.New(t, dockertest.Options{})
	if _, err := d.Create(context.Background(), dockertest.Spec{Name: "c1"}); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, d)
	r.det.cfg.GPU = gpu.New(nvml.New(nvml.WithLibraryPath(filepath.Join(r.Dir, "no-libnvidia-ml.so.1"))), nil)
	r.cycle()
	st := r.State()
	if len(st.Containers) != 1 || st.Sources.GPU.OK || st.Sources.GPU.Error == "" || !st.Sources.Docker.OK {
		t.Fatalf("state: %+v", st)
	}
}

// A user makes a cgroup of their own named after alice's container (on a
// production host: a scope in their delegated user@.service tree) and runs
// GPU work in it. The work is theirs, not alice's.
func TestForgedScopeIsNotCreditedToTheContainer(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	cid, err := d.Create(ctx, dockertest.Spec{Name: "alice-work", Labels: map[string]string{"ds01.user": "alice"}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	uid := ensureUser(t)
	// A real v2 cgroup, outside Docker's tree, whose name claims the
	// container.
	parent := filepath.Join("/sys/fs/cgroup/unified", "ds01test-"+strconv.Itoa(os.Getpid())+".slice")
	scopeDir := filepath.Join(parent, "docker-"+cid+".scope")
	if err := os.MkdirAll(scopeDir, 0o755); err != nil {
		t.Fatalf("cannot make a v2 cgroup: %v", err)
	}
	t.Cleanup(func() { os.Remove(scopeDir); os.Remove(parent) })
	thief := exec.Command("sleep", "600")
	thief.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	if err := thief.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { thief.Process.Kill(); thief.Wait() })
	if err := os.WriteFile(filepath.Join(scopeDir, "cgroup.procs"), []byte(strconv.Itoa(thief.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile("/proc/" + strconv.Itoa(thief.Process.Pid) + "/cgroup"); !strings.Contains(string(b), "docker-"+cid+".scope") {
		t.Fatalf("the process is not in the forged scope:\n%s", b)
	}

	srv := gputest.H100()
	gputest.SetProcs(srv, 0, []nvml.ProcessInfo{gputest.Proc(thief.Process.Pid, 4096)}, nil)
	ok := nvml.SUCCESS
	r := newRig(t, d)
	r.det = New(Config{
		Files:  deliver.Config{StatePath: r.StatePath, EventsPath: r.EventsPath},
		Docker: r.src, GPU: gpu.New(gputest.NewGuard(t, srv, &ok), nil), Proc: proc.New("/proc"), Users: userdb.New(time.Minute).Lookup,
		Rules: reconcile.Rules{Excluded: reconcile.DefaultExcluded, ConfirmAfter: time.Nanosecond},
	}, nil)
	r.cycle()
	r.cycle()
	st := r.State()
	if c := st.Containers[cid[:12]]; len(c.GPUProcesses) != 0 || c.GPUMemoryMB != nil {
		t.Fatalf("the forged scope's process was credited to alice's container: %+v", c.GPUProcesses)
	}
	hp, found := st.HostProcesses[strconv.Itoa(thief.Process.Pid)]
	if !found || hp.User != testUser || hp.ClaimedContainer != cid[:12] {
		t.Fatalf("not a host process of %s claiming %s: %+v", testUser, cid[:12], st.HostProcesses)
	}
	var discovered bool
	for _, e := range r.NewEvents() {
		if e.EventType == event.HostProcessDiscovered && e.User == testUser {
			discovered = true
		}
	}
	if !discovered {
		t.Error("no host_gpu_process_discovered for the thief")
	}
}

// mallory starts a container with --cgroup-parent=/docker/<alice's full
// id> on a real dockerd (cgroupfs driver): its cgroup path names alice's
// container first. Its GPU process is mallory's container's; alice's
// container never gets it.
func TestCgroupParentUnderAnotherContainer(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	alice, err := d.Create(ctx, dockertest.Spec{Name: "alice-job", Labels: map[string]string{"ds01.user": "alice"}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	var hc container.HostConfig
	hc.CgroupParent = "/docker/" + alice
	mallory, err := d.Create(ctx, dockertest.Spec{Name: "mallory-job", Labels: map[string]string{"ds01.user": "mallory"}, Host: hc, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	js, err := d.Client.ContainerInspect(ctx, mallory)
	if err != nil {
		t.Fatal(err)
	}
	cg, _ := os.ReadFile("/proc/" + strconv.Itoa(js.State.Pid) + "/cgroup")
	if !strings.Contains(string(cg), "/docker/"+alice+"/"+mallory) {
		t.Fatalf("mallory's container is not nested under alice's:\n%s", cg)
	}
	srv := gputest.H100()
	gputest.SetProcs(srv, 0, []nvml.ProcessInfo{gputest.Proc(js.State.Pid, 1024)}, nil)
	ok := nvml.SUCCESS
	r := newRig(t, d)
	r.det = New(Config{
		Files:  deliver.Config{StatePath: r.StatePath, EventsPath: r.EventsPath},
		Docker: r.src, GPU: gpu.New(gputest.NewGuard(t, srv, &ok), nil), Proc: proc.New("/proc"), Users: userdb.New(time.Minute).Lookup,
	}, nil)
	r.cycle()
	st := r.State()
	a, m := st.Containers[alice[:12]], st.Containers[mallory[:12]]
	if len(a.GPUProcesses) != 0 || len(m.GPUProcesses) != 1 || m.GPUProcesses[0].Pid != js.State.Pid || m.User != "mallory" {
		t.Fatalf("alice's container: %+v\nmallory's: %+v", a.GPUProcesses, m.GPUProcesses)
	}
}

// A user makes a scope named like a rootless podman container inside their
// own delegated tree (…/user@<uid>.service/app.slice/libpod-<hex>.scope:
// `systemd-run --user --scope --unit=libpod-…`) and runs GPU work in it.
// It is their host process (runtime records the claim), with counters, in
// the state, the event log and the report, not an other_gpu_processes
// entry nobody accounts. A system-level libpod scope keeps its treatment.
func TestUserTreeScopeNamedLikePodmanIsTheUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: makes a user and a real cgroup (sudo make test)")
	}
	uid := ensureUser(t)
	hexID := strings.Repeat("e", 64)
	parent := filepath.Join("/sys/fs/cgroup/unified", "ds01test-"+strconv.Itoa(os.Getpid())+".slice")
	tree := filepath.Join(parent, "user@"+strconv.Itoa(int(uid))+".service", "app.slice")
	scopeDir := filepath.Join(tree, "libpod-"+hexID+".scope")
	if err := os.MkdirAll(scopeDir, 0o755); err != nil {
		t.Fatalf("cannot make a v2 cgroup: %v", err)
	}
	t.Cleanup(func() {
		os.Remove(scopeDir)
		os.Remove(tree)
		os.Remove(filepath.Dir(tree))
		os.Remove(parent)
	})
	work := exec.Command("sleep", "600")
	work.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	if err := work.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { work.Process.Kill(); work.Wait() })
	if err := os.WriteFile(filepath.Join(scopeDir, "cgroup.procs"), []byte(strconv.Itoa(work.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := gputest.H100()
	gputest.SetProcs(srv, 0, []nvml.ProcessInfo{gputest.Proc(work.Process.Pid, 4096)}, nil)
	ok := nvml.SUCCESS
	files := testutil.NewFiles(t)
	now := time.Now()
	s := New(Config{Files: deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}, Docker: listed{},
		GPU: gpu.New(gputest.NewGuard(t, srv, &ok), nil), Proc: proc.New("/proc"), Users: userdb.New(time.Minute).Lookup,
		Now: func() time.Time { return now }}, nil)
	ctx := context.Background()
	s.Scan(ctx, true)
	now = now.Add(30 * time.Second)
	sum := s.Scan(ctx, true)
	st := sum.State
	hp, found := st.HostProcesses[strconv.Itoa(work.Process.Pid)]
	if !found || hp.User != testUser || hp.Runtime != proc.RuntimePodman || hp.ClaimedContainer != hexID[:12] || hp.GPUHeldSeconds != 30 {
		t.Fatalf("not a host process of %s claiming podman %s with 30 s held: %+v (other: %+v)", testUser, hexID[:12], st.HostProcesses, st.OtherGPUProcesses)
	}
	if len(st.OtherGPUProcesses) != 0 {
		t.Errorf("also in other_gpu_processes: %+v", st.OtherGPUProcesses)
	}
	if got := sum.UserGPUSeconds[testUser].Held; got != 30 {
		t.Errorf("per-user held (the metric's increment): %v", got)
	}
	var discovered bool
	for _, e := range files.Events() {
		discovered = discovered || (e.EventType == event.HostProcessDiscovered && e.User == testUser)
	}
	if !discovered {
		t.Error("no host_gpu_process_discovered")
	}
	doc, err := report.Build(report.Input{EventsFile: files.EventsPath, State: files.State()})
	if err != nil || len(doc.Rows) != 1 || doc.Rows[0].Key != testUser || doc.Rows[0].HeldSeconds != 30 {
		t.Errorf("report: %+v %v", doc.Rows, err)
	}
	// The same name outside any user's tree: another runtime's container.
	ref := proc.ParseCgroup([]byte("0::/machine.slice/libpod-" + hexID + ".scope\n"))
	if ref.UserTree || ref.Runtime != proc.RuntimePodman {
		t.Errorf("system-level libpod scope: %+v", ref)
	}
}

// docker rename from one owner's name to another's, on a real dockerd,
// while the container holds a GPU: one detection.owner_changed, the
// seconds before the rename stay the first owner's in the state, the
// exited event and the report.
func TestRenameKeepsTimeWithTheFirstOwner(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	uid := ensureUser(t)
	cid, err := d.Create(ctx, dockertest.Spec{Name: "job._.65534", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	js, err := d.Client.ContainerInspect(ctx, cid)
	if err != nil {
		t.Fatal(err)
	}
	srv := gputest.H100()
	gputest.SetProcs(srv, 0, []nvml.ProcessInfo{gputest.Proc(js.State.Pid, 1024)}, nil)
	ok := nvml.SUCCESS
	r := newRig(t, d)
	now := time.Now()
	r.det = New(Config{
		Files:  deliver.Config{StatePath: r.StatePath, EventsPath: r.EventsPath},
		Docker: r.src, GPU: gpu.New(gputest.NewGuard(t, srv, &ok), nil), Proc: proc.New("/proc"), Users: userdb.New(time.Minute).Lookup,
		Now: func() time.Time { return now },
	}, nil)
	step := func() {
		r.cycle()
		now = now.Add(30 * time.Second)
	}
	step()
	step()
	step() // 60 s held as nobody's
	first := r.State().Containers[cid[:12]].User
	if err := d.Client.ContainerRename(ctx, cid, "job._."+strconv.Itoa(int(uid))); err != nil {
		t.Fatal(err)
	}
	step()
	step() // 60 s more, the new owner's
	c := r.State().Containers[cid[:12]]
	if first == testUser || c.User != testUser || !c.UserConflict || len(c.OwnerSeconds) != 2 ||
		c.OwnerSeconds[0].User != first || c.OwnerSeconds[0].GPUHeldSeconds != 60 || c.OwnerSeconds[1].User != testUser || c.OwnerSeconds[1].GPUHeldSeconds != 60 {
		t.Fatalf("after the rename: user %q (first %q) conflict %v by owner %+v", c.User, first, c.UserConflict, c.OwnerSeconds)
	}
	if err := d.Client.ContainerRemove(ctx, cid, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	gputest.SetProcs(srv, 0, nil, nil)
	step()
	var changed int
	for _, e := range r.Events() {
		switch e.EventType {
		case event.OwnerChanged:
			changed++
			if d := testutil.Details(t, e); d["old_user"] != first || d["new_user"] != testUser || e.User != testUser {
				t.Errorf("owner_changed: %s %s", e.User, e.Details)
			}
		case event.ContainerExited:
			if by, _ := testutil.Details(t, e)["gpu_seconds_by_owner"].([]any); len(by) != 2 {
				t.Errorf("exited without the split: %s", e.Details)
			}
		}
	}
	if changed != 1 {
		t.Errorf("%d owner_changed lines, want 1", changed)
	}
	doc, err := report.Build(report.Input{EventsFile: r.EventsPath, State: r.State()})
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]float64{}
	for _, row := range doc.Rows {
		held[row.Key] = row.HeldSeconds
	}
	if held[first] != 60 || held[testUser] != 60 {
		t.Errorf("report: %v, want 60 s for %s and 60 s for %s", held, first, testUser)
	}
}
