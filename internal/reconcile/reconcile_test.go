package reconcile

import (
	"encoding/json"
	"errors"
	"io/fs"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func id(n int) string { return strings.Repeat(strconv.Itoa(n%10), 64) }

func ctr(n int, status string) facts.Container {
	c := facts.Container{ID: id(n), Name: "c" + strconv.Itoa(n), Image: "img", Status: status, Labels: map[string]string{"ds01.user": "alice"}}
	if status == "running" {
		c.Pid = 1000 + n
	}
	return c
}

func mib(v int64) *int64 { return &v }

// gpuProc is a GPU process with its /proc facts: in container n's cgroup
// when n > 0, else a host process of uid 1001 started at start.
type gpuProc struct {
	pid    int
	ctr    int
	start  uint64
	forged bool     // the cgroup names ctr but lies in the user's own delegated tree
	uid    uint32   // 0: 1001
	argv   []string // nil: python train.py
	root   bool     // uid 0
	sm     *int     // SM utilisation NVML reported; nil: unknown
}

// step is one cycle: what the sources report, and what must come out.
type step struct {
	containers []facts.Container
	ephemeral  []facts.Container
	dockerErr  error
	procs      []gpuProc
	gpuErr     error
	procErr    error     // /proc unreadable (EMFILE): every GPU process's reads failed
	checkpoint time.Time // the stream's checkpoint
	listStart  time.Time

	want  []string // "event_type short-id-or-pid", in order
	check func(t *testing.T, st inventory.State)
}

// ptrs is a list as the Docker source's snapshots hold it.
func ptrs(list []facts.Container) []*facts.Container {
	out := make([]*facts.Container, len(list))
	for i := range list {
		out[i] = &list[i]
	}
	return out
}

func (s step) facts(now time.Time) facts.Scan {
	f := facts.Scan{Now: now, DockerErr: s.dockerErr, GPUErr: s.gpuErr, Users: map[uint32]string{1001: "bob"}}
	f.Docker = facts.Snapshot{Containers: ptrs(s.containers), Ephemeral: s.ephemeral, Checkpoint: s.checkpoint, ListStart: s.listStart}
	f.Procs = map[int]facts.Proc{}
	f.Inits = map[string]facts.Init{}
	for _, c := range s.containers {
		if c.Pid > 0 {
			f.Inits[c.ID] = facts.Init{Cgroup: scope("/system.slice", c.ID)}
		}
	}
	for _, p := range s.procs {
		f.GPU = append(f.GPU, facts.GPUProcess{Pid: p.pid, GPUIndex: 0, GPUUUID: "GPU-0", MIGIndex: -1, MemoryMiB: mib(512), SMUtil: p.sm})
		pf := facts.Proc{Argv: p.argv, UID: 1001, StartTime: p.start}
		if pf.Argv == nil {
			pf.Argv = []string{"python", "train.py"}
		}
		if p.uid != 0 {
			pf.UID = p.uid
		}
		if p.root {
			pf.UID = 0
		}
		switch {
		case p.forged:
			pf.Cgroup = scope("/user.slice/user-1001.slice/user@1001.service/app.slice", id(p.ctr))
		case p.ctr > 0:
			pf.Cgroup = scope("/system.slice", id(p.ctr))
		}
		if s.procErr != nil {
			pf = facts.Proc{CgroupErr: s.procErr}
		}
		f.Procs[p.pid] = pf
	}
	f.ProcErr = s.procErr
	return f
}

// scope is the cgroup of a Docker container under parent (v2, systemd
// driver).
func scope(parent, full string) proc.ContainerRef {
	p := parent + "/docker-" + full + ".scope"
	return proc.ContainerRef{Runtime: proc.RuntimeDocker, ID: full, Hierarchy: "0", Path: p, Full: p}
}

func describe(ts []Transition) []string {
	out := []string{}
	for _, t := range ts {
		var subject string
		switch d := t.Details.(type) {
		case event.ContainerDiscoveredDetails:
			subject = d.ContainerID
		case event.ContainerStatusChangedDetails:
			subject = d.ContainerID + " " + d.OldStatus + "->" + d.NewStatus
		case event.ContainerExitedDetails:
			subject = d.ContainerID
		case event.HostProcessDiscoveredDetails:
			subject = strconv.Itoa(d.Pid)
		case event.HostProcessExitedDetails:
			subject = strconv.Itoa(d.Pid) + "@" + strconv.FormatUint(d.StartTime, 10)
		case event.ShortProcessesDetails:
			subject = t.User + " x" + strconv.Itoa(d.Count)
		case event.GPUIdleDetails:
			subject = d.ContainerID
			if d.Pid != 0 {
				subject = strconv.Itoa(d.Pid)
			}
		}
		out = append(out, strings.TrimPrefix(t.EventType, "detection.")+" "+subject)
	}
	return out
}

var (
	c1        = id(1)[:12]
	c2        = id(2)[:12]
	errDown   = errors.New("docker list: connection refused")
	errGPU    = errors.New("nvml: GPU is lost")
	errEMFILE = &fs.PathError{Op: "open", Path: "/proc/10/cgroup", Err: syscall.EMFILE}
)

func TestReconcileTransitions(t *testing.T) {
	cases := []struct {
		name  string
		steps []step
	}{
		{"discovered", []step{
			{containers: []facts.Container{ctr(1, "running")}, want: []string{"container_discovered " + c1},
				check: func(t *testing.T, st inventory.State) {
					c := st.Containers[c1]
					if c.User != "alice" || c.UserSource != "label:ds01.user" || !c.DetectedAt.Equal(t0) || c.FullID != id(1) || c.Pid != 1001 {
						t.Errorf("container: %+v", c)
					}
				}},
			{containers: []facts.Container{ctr(1, "running")}, want: []string{}},
		}},
		{"status change keeps detected_at", []step{
			{containers: []facts.Container{ctr(1, "created")}, want: []string{"container_discovered " + c1}},
			{containers: []facts.Container{ctr(1, "running")}, want: []string{"container_status_changed " + c1 + " created->running"},
				check: func(t *testing.T, st inventory.State) {
					if !st.Containers[c1].DetectedAt.Equal(t0) {
						t.Errorf("detected_at moved: %v", st.Containers[c1].DetectedAt)
					}
				}},
		}},
		{"removal", []step{
			{containers: []facts.Container{ctr(1, "exited"), ctr(2, "running")}, want: []string{"container_discovered " + c1, "container_discovered " + c2}},
			{containers: []facts.Container{ctr(2, "running")}, want: []string{"container_exited " + c1},
				check: func(t *testing.T, st inventory.State) {
					if _, ok := st.Containers[c1]; ok {
						t.Error("removed container still listed")
					}
					if _, ok := st.RecentlyExited[c1]; !ok {
						t.Error("removal not remembered for replays")
					}
				}},
		}},
		{"ephemeral create and destroy, then its replay", []step{
			{ephemeral: []facts.Container{ctr(1, "created")}, want: []string{"container_discovered " + c1, "container_exited " + c1},
				check: func(t *testing.T, st inventory.State) {
					if len(st.Containers) != 0 {
						t.Errorf("ephemeral container listed: %v", st.Containers)
					}
				}},
			{ephemeral: []facts.Container{ctr(1, "created")}, want: []string{}},
		}},
		{"ephemeral already known is not reported twice", []step{
			{containers: []facts.Container{ctr(1, "running")}, want: []string{"container_discovered " + c1}},
			{ephemeral: []facts.Container{ctr(1, "exited")}, want: []string{"container_exited " + c1}},
		}},
		{"docker fails: containers kept, then recovers", []step{
			{containers: []facts.Container{ctr(1, "running")}, want: []string{"container_discovered " + c1}},
			{dockerErr: errDown, want: []string{},
				check: func(t *testing.T, st inventory.State) {
					h := st.Sources.Docker
					if len(st.Containers) != 1 || h.OK || h.Error != errDown.Error() || h.LastOK == nil || !h.LastOK.Equal(t0) {
						t.Errorf("while failing: %d containers, health %+v", len(st.Containers), h)
					}
				}},
			{dockerErr: errDown, want: []string{}},
			{containers: []facts.Container{ctr(1, "running")}, want: []string{},
				check: func(t *testing.T, st inventory.State) {
					if !st.Sources.Docker.OK || st.Sources.Docker.Error != "" {
						t.Errorf("not recovered: %+v", st.Sources.Docker)
					}
				}},
		}},
		{"docker recovers without a container that went meanwhile", []step{
			{containers: []facts.Container{ctr(1, "running")}, want: []string{"container_discovered " + c1}},
			{dockerErr: errDown, want: []string{}},
			{want: []string{"container_exited " + c1}},
		}},
		{"gpu fails: GPU data kept", []step{
			{containers: []facts.Container{ctr(1, "running")}, procs: []gpuProc{{pid: 50, ctr: 1}, {pid: 60, start: 7}},
				want: []string{"container_discovered " + c1}},
			{containers: []facts.Container{ctr(1, "running")}, procs: []gpuProc{{pid: 50, ctr: 1}, {pid: 60, start: 7}},
				want: []string{"host_gpu_process_discovered 60"}},
			{containers: []facts.Container{ctr(1, "running")}, gpuErr: errGPU, want: []string{},
				check: func(t *testing.T, st inventory.State) {
					c := st.Containers[c1]
					if len(c.GPUProcesses) != 1 || c.GPUMemoryMB == nil || *c.GPUMemoryMB != 512 || !c.GPUWithoutAccess {
						t.Errorf("container GPU data lost: %+v", c)
					}
					if _, ok := st.HostProcesses["60"]; !ok || st.Sources.GPU.OK || st.Sources.GPU.Error != errGPU.Error() {
						t.Errorf("host processes %v, health %+v", st.HostProcesses, st.Sources.GPU)
					}
				}},
			{containers: []facts.Container{ctr(1, "running")}, want: []string{"host_gpu_process_exited 60@7"},
				check: func(t *testing.T, st inventory.State) {
					if c := st.Containers[c1]; len(c.GPUProcesses) != 0 || c.GPUMemoryMB != nil || !st.Sources.GPU.OK {
						t.Errorf("after recovery: %+v", c)
					}
				}},
		}},
		{"two-cycle rule", []step{
			{procs: []gpuProc{{pid: 10, start: 100}}, want: []string{},
				check: func(t *testing.T, st inventory.State) {
					p, ok := st.PendingProcesses["10"]
					if !ok || len(st.HostProcesses) != 0 || p.User != "bob" || p.Cmdline != "python train.py" {
						t.Errorf("first sighting: pending %+v", st.PendingProcesses)
					}
				}},
			{procs: []gpuProc{{pid: 10, start: 100}}, want: []string{"host_gpu_process_discovered 10"},
				check: func(t *testing.T, st inventory.State) {
					if p := st.HostProcesses["10"]; p.DetectedAt == nil || !p.DetectedAt.Equal(t0) {
						t.Errorf("detected_at is not the first sighting: %+v", p)
					}
				}},
			{procs: []gpuProc{{pid: 10, start: 100}}, want: []string{}},
			{want: []string{"host_gpu_process_exited 10@100"}},
		}},
		{"/proc unreadable is a failed source, not processes gone", []step{
			{procs: []gpuProc{{pid: 10, start: 100}, {pid: 11, ctr: 1}}, containers: []facts.Container{ctr(1, "running")}, want: []string{"container_discovered " + c1}},
			{procs: []gpuProc{{pid: 10, start: 100}, {pid: 11, ctr: 1}}, containers: []facts.Container{ctr(1, "running")}, want: []string{"host_gpu_process_discovered 10"}},
			{procs: []gpuProc{{pid: 10, start: 100}, {pid: 11, ctr: 1}}, containers: []facts.Container{ctr(1, "running")}, procErr: errEMFILE, want: []string{},
				check: func(t *testing.T, st inventory.State) {
					if st.Sources.Proc.OK || !strings.Contains(st.Sources.Proc.Error, "too many open files") || !st.Sources.GPU.OK {
						t.Errorf("sources: %+v", st.Sources)
					}
					if _, ok := st.HostProcesses["10"]; !ok {
						t.Errorf("host process dropped: %v", st.HostProcesses)
					}
					if c := st.Containers[c1]; len(c.GPUProcesses) != 1 || len(st.OtherGPUProcesses) != 0 {
						t.Errorf("GPU use not kept: container %+v, other %+v", c.GPUProcesses, st.OtherGPUProcesses)
					}
				}},
			{procs: []gpuProc{{pid: 10, start: 100}, {pid: 11, ctr: 1}}, containers: []facts.Container{ctr(1, "running")}, want: []string{},
				check: func(t *testing.T, st inventory.State) {
					if !st.Sources.Proc.OK {
						t.Errorf("proc source not recovered: %+v", st.Sources.Proc)
					}
				}},
		}},
		{"a process seen once gets no events of its own, only its user's aggregate", []step{
			{procs: []gpuProc{{pid: 10, start: 100}}, want: []string{}},
			{want: []string{"short_gpu_processes bob x1"}},
		}},
		{"PID reuse is a new process", []step{
			{procs: []gpuProc{{pid: 10, start: 100}}, want: []string{}},
			{procs: []gpuProc{{pid: 10, start: 100}}, want: []string{"host_gpu_process_discovered 10"}},
			{procs: []gpuProc{{pid: 10, start: 999}}, want: []string{"host_gpu_process_exited 10@100"},
				check: func(t *testing.T, st inventory.State) {
					if st.PendingProcesses["10"].StartTime != 999 || len(st.HostProcesses) != 0 {
						t.Errorf("reused PID: confirmed %v pending %v", st.HostProcesses, st.PendingProcesses)
					}
				}},
			{procs: []gpuProc{{pid: 10, start: 999}}, want: []string{"host_gpu_process_discovered 10"}},
		}},
		{"replay checkpoint", []step{
			{listStart: t0, want: []string{},
				check: func(t *testing.T, st inventory.State) {
					if st.DockerEventsSince == nil || !st.DockerEventsSince.Equal(t0.Add(-time.Second)) {
						t.Errorf("first checkpoint: %v", st.DockerEventsSince)
					}
				}},
			{listStart: t0.Add(time.Minute), want: []string{},
				check: func(t *testing.T, st inventory.State) {
					if !st.DockerEventsSince.Equal(t0.Add(-time.Second)) {
						t.Errorf("checkpoint moved without a stream event: %v", st.DockerEventsSince)
					}
				}},
			{checkpoint: t0.Add(10 * time.Second), want: []string{},
				check: func(t *testing.T, st inventory.State) {
					if !st.DockerEventsSince.Equal(t0.Add(10 * time.Second)) {
						t.Errorf("stream checkpoint not taken: %v", st.DockerEventsSince)
					}
				}},
			{checkpoint: t0.Add(5 * time.Second), want: []string{},
				check: func(t *testing.T, st inventory.State) {
					if !st.DockerEventsSince.Equal(t0.Add(10 * time.Second)) {
						t.Errorf("checkpoint moved back: %v", st.DockerEventsSince)
					}
				}},
			{dockerErr: errDown, checkpoint: t0.Add(time.Hour), want: []string{},
				check: func(t *testing.T, st inventory.State) {
					if !st.DockerEventsSince.Equal(t0.Add(10 * time.Second)) {
						t.Errorf("checkpoint moved on a failed list: %v", st.DockerEventsSince)
					}
				}},
		}},
	}
	cases = append(cases, hostileCases...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := inventory.Empty()
			for i, s := range tc.steps {
				before, _ := json.Marshal(st)
				res := Reconcile(st, s.facts(t0.Add(time.Duration(i)*30*time.Second)), Rules{Excluded: DefaultExcluded})
				if got := describe(res.Transitions); !reflect.DeepEqual(got, s.want) {
					t.Fatalf("step %d: transitions %q, want %q", i+1, got, s.want)
				}
				if after, _ := json.Marshal(st); string(before) != string(after) {
					t.Fatalf("step %d: Reconcile changed its input", i+1)
				}
				if s.check != nil {
					s.check(t, res.State)
				}
				st = res.State
			}
		})
	}
}

// A container using a GPU its configuration does not grant gives one
// warning when it starts, not one per cycle.
func TestGPUWithoutAccessWarnsOnce(t *testing.T) {
	s := step{containers: []facts.Container{ctr(1, "running")}, procs: []gpuProc{{pid: 50, ctr: 1}}}
	st := inventory.Empty()
	var warnings []int
	for i := 0; i < 3; i++ {
		res := Reconcile(st, s.facts(t0.Add(time.Duration(i)*time.Second)), Rules{})
		n := 0
		for _, w := range res.Warnings {
			if w.Kind == WarnGPUWithoutAccess {
				n++
			}
		}
		warnings = append(warnings, n)
		st = res.State
	}
	if !reflect.DeepEqual(warnings, []int{1, 0, 0}) {
		t.Errorf("warnings per cycle: %v", warnings)
	}
}

var c3 = id(3)[:12]

// Users are adversaries: no name hides a user's process, and no cgroup a
// user can make credits their work to someone else's container.
var hostileCases = []struct {
	name  string
	steps []step
}{
	{"exec -a Xorg by a user is a host process", []step{
		{procs: []gpuProc{{pid: 20, start: 1, argv: []string{"Xorg", "train.py"}}, {pid: 21, start: 1, argv: []string{"/usr/bin/nvidia-persistenced", "--x"}}}, want: []string{}},
		{procs: []gpuProc{{pid: 20, start: 1, argv: []string{"Xorg", "train.py"}}, {pid: 21, start: 1, argv: []string{"/usr/bin/nvidia-persistenced", "--x"}}},
			want: []string{"host_gpu_process_discovered 20", "host_gpu_process_discovered 21"},
			check: func(t *testing.T, st inventory.State) {
				if st.HostProcesses["20"].User != "bob" || st.HostProcesses["21"].User != "bob" {
					t.Errorf("host processes: %+v", st.HostProcesses)
				}
			}},
	}},
	{"root's Xorg and system accounts are left out by name", []step{
		{procs: []gpuProc{{pid: 22, start: 1, root: true, argv: []string{"/usr/lib/xorg/Xorg", ":0"}}, {pid: 23, start: 1, uid: 999, argv: []string{"nv-hostengine"}}}, want: []string{}},
		{procs: []gpuProc{{pid: 22, start: 1, root: true, argv: []string{"/usr/lib/xorg/Xorg", ":0"}}, {pid: 23, start: 1, uid: 999, argv: []string{"nv-hostengine"}}}, want: []string{},
			check: func(t *testing.T, st inventory.State) {
				if len(st.HostProcesses)+len(st.PendingProcesses) != 0 {
					t.Errorf("system processes listed: %+v %+v", st.HostProcesses, st.PendingProcesses)
				}
			}},
	}},
	{"a delegated scope named after a container is not that container's", []step{
		{containers: []facts.Container{ctr(1, "running")}, procs: []gpuProc{{pid: 70, ctr: 1, forged: true, start: 5}},
			want: []string{"container_discovered " + c1},
			check: func(t *testing.T, st inventory.State) {
				if c := st.Containers[c1]; len(c.GPUProcesses) != 0 || c.GPUMemoryMB != nil {
					t.Errorf("forged process credited to the container: %+v", c.GPUProcesses)
				}
				if p := st.PendingProcesses["70"]; p.ClaimedContainer != c1 || p.User != "bob" {
					t.Errorf("not a pending host process of its user: %+v", st.PendingProcesses)
				}
			}},
		{containers: []facts.Container{ctr(1, "running")}, procs: []gpuProc{{pid: 70, ctr: 1, forged: true, start: 5}},
			want: []string{"host_gpu_process_discovered 70"}},
	}},
	{"a cgroup naming a container Docker does not list gets the two-cycle rule", []step{
		{containers: []facts.Container{ctr(1, "running")}, procs: []gpuProc{{pid: 80, ctr: 3, start: 9}}, want: []string{"container_discovered " + c1},
			check: func(t *testing.T, st inventory.State) {
				if len(st.OtherGPUProcesses) != 0 || st.PendingProcesses["80"].ClaimedContainer != c3 {
					t.Errorf("other %+v pending %+v", st.OtherGPUProcesses, st.PendingProcesses)
				}
			}},
		{containers: []facts.Container{ctr(1, "running")}, procs: []gpuProc{{pid: 80, ctr: 3, start: 9}}, want: []string{"host_gpu_process_discovered 80"}},
		{containers: []facts.Container{ctr(1, "running")}, want: []string{"host_gpu_process_exited 80@9"}},
	}},
	{"the container's own process is credited, with how", []step{
		{containers: []facts.Container{ctr(1, "running")}, procs: []gpuProc{{pid: 50, ctr: 1}}, want: []string{"container_discovered " + c1},
			check: func(t *testing.T, st inventory.State) {
				gp := st.Containers[c1].GPUProcesses
				if len(gp) != 1 || gp[0].Attribution != "cgroup" || gp[0].UID == nil || *gp[0].UID != 1001 {
					t.Errorf("gpu processes: %+v", gp)
				}
				if !st.Containers[c1].UserConflict {
					t.Error("label alice, process of bob: no conflict recorded")
				}
			}},
	}},
}

func TestOwnerSignalsAndConflicts(t *testing.T) {
	c := ctr(1, "running")
	c.Mounts = []facts.Mount{{Type: "bind", Source: "/home/alice/proj"}}
	f := step{containers: []facts.Container{c}}.facts(t0)
	res := Reconcile(inventory.Empty(), f, Rules{})
	got := res.State.Containers[c1]
	want := []inventory.UserSignal{{Source: inventory.UserSourceLabelUser, User: "alice"}, {Source: inventory.UserSourceBindMount, User: "alice"}}
	if !reflect.DeepEqual(got.UserSignals, want) || got.UserConflict || len(res.Warnings) != 0 {
		t.Fatalf("agreeing signals: %+v conflict=%v warnings=%v", got.UserSignals, got.UserConflict, res.Warnings)
	}
	// The init process runs as bob: a conflict, warned about once.
	f.InitUIDs = map[string]uint32{c.ID: 1001}
	res = Reconcile(res.State, f, Rules{})
	got = res.State.Containers[c1]
	if !got.UserConflict || got.User != "alice" || len(res.Warnings) != 1 || got.UserSignals[2] != (inventory.UserSignal{Source: inventory.UserSourceProcessOwner, User: "bob"}) {
		t.Fatalf("conflict: %+v warnings=%v", got, res.Warnings)
	}
	res = Reconcile(res.State, f, Rules{})
	if len(res.Warnings) != 0 {
		t.Errorf("conflict warned again: %v", res.Warnings)
	}
}

func pct(v int) *int { return &v }

// Held versus used, over a scripted run with 30 s cycles and a 60 s idle
// rule: busy, then idle (one gpu_idle after 60 s below the threshold), then
// busy again (one gpu_active); a restart in the middle of the idle period
// keeps idle_since and the counters and emits no second gpu_idle; a
// workload whose utilisation is unknown gets neither event.
func TestHeldVersusUsed(t *testing.T) {
	c := ctr(1, "running")
	c.DeviceRequests = []facts.DeviceRequest{{DeviceIDs: []string{"0"}, Capabilities: [][]string{{"gpu"}}}}
	c.Labels["ds01.user"] = "bob" // its processes run as bob: no conflict
	unknownC := ctr(2, "running")
	unknownC.Labels["ds01.user"] = "bob"
	rules := Rules{IdleThreshold: 5, IdleAfter: 60 * time.Second}
	seq := []struct {
		sm       *int
		want     []string
		restart  bool
		idleFrom int // cycle whose time idle_since must be; -1: null
	}{
		{pct(80), []string{"container_discovered " + c1, "container_discovered " + c2}, false, -1}, // 0
		{pct(60), nil, false, -1},                     // 1
		{pct(0), nil, false, 2},                       // 2: below, idle since now
		{pct(3), nil, false, 2},                       // 3: 30 s
		{pct(0), []string{"gpu_idle " + c1}, true, 2}, // 4: 60 s: idle; then a restart
		{pct(1), nil, false, 2},                       // 5: still idle, no second event
		{pct(40), []string{"gpu_active " + c1}, false, -1},
		{pct(50), nil, false, -1},
	}
	st := inventory.Empty()
	var all []Transition
	for i, s := range seq {
		now := t0.Add(time.Duration(i) * 30 * time.Second)
		f := step{containers: []facts.Container{c, unknownC}, procs: []gpuProc{{pid: 50, ctr: 1, sm: s.sm}, {pid: 51, ctr: 2, sm: nil}}}.facts(now)
		f.GPUDevices = []facts.GPUDevice{{Index: 0, UUID: "GPU-0", Util: s.sm}}
		res := Reconcile(st, f, rules)
		got := describe(res.Transitions)
		if strings.Join(got, ",") != strings.Join(append([]string{}, s.want...), ",") {
			t.Fatalf("cycle %d: transitions %q, want %q", i, got, s.want)
		}
		all = append(all, res.Transitions...)
		st = res.State
		cc := st.Containers[c1]
		switch {
		case s.idleFrom < 0 && cc.GPUIdleSince != nil:
			t.Errorf("cycle %d: idle since %v while active", i, cc.GPUIdleSince)
		case s.idleFrom >= 0 && (cc.GPUIdleSince == nil || !cc.GPUIdleSince.Equal(t0.Add(time.Duration(s.idleFrom)*30*time.Second))):
			t.Errorf("cycle %d: idle since %v, want cycle %d", i, cc.GPUIdleSince, s.idleFrom)
		}
		if u := st.Containers[c2]; u.GPUIdle || u.GPUIdleSince != nil || u.GPUUtilizationPercent != nil || u.GPUBusySeconds != 0 {
			t.Errorf("cycle %d: unknown utilisation counted: %+v", i, u)
		}
		if s.restart { // what a restarted daemon reads back
			b, _ := json.Marshal(st)
			var err error
			if st, err = inventory.Parse(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	cc := st.Containers[c1]
	// 7 accounted intervals of 30 s; one GPU granted and held throughout;
	// busy in cycles 1, 6 and 7 (80 % at cycle 0 has no interval before it).
	if cc.GPUAllocatedSeconds != 210 || cc.GPUHeldSeconds != 210 || cc.GPUBusySeconds != 90 || *cc.GPUUtilizationPercent != 50 {
		t.Errorf("counters: allocated %v held %v busy %v util %v", cc.GPUAllocatedSeconds, cc.GPUHeldSeconds, cc.GPUBusySeconds, *cc.GPUUtilizationPercent)
	}
	for _, tr := range all {
		if d, ok := tr.Details.(event.GPUIdleDetails); ok {
			if tr.User != "bob" || d.ContainerID != c1 || d.ThresholdPercent != 5 || len(d.GPUUUIDs) != 1 || d.GPUMemoryMB == nil || d.IdleSince == nil {
				t.Errorf("%s details: %+v user %q", tr.EventType, d, tr.User)
			}
		}
	}
	// The exit carries the counters.
	f := step{}.facts(t0.Add(8 * 30 * time.Second))
	res := Reconcile(st, f, rules)
	for _, tr := range res.Transitions {
		if d, ok := tr.Details.(event.ContainerExitedDetails); ok && d.ContainerID == c1 {
			if d.GPUAllocatedSeconds != 210 || d.GPUHeldSeconds != 210 || d.GPUBusySeconds != 90 {
				t.Errorf("exited event counters: %+v", d.GPUSeconds)
			}
			return
		}
	}
	t.Error("no container_exited")
}

// While Docker fails, the kept containers are not observed: their counters
// and idle state stay as they were.
func TestDockerFailureAccountsNothing(t *testing.T) {
	c := ctr(1, "running")
	c.DeviceRequests = []facts.DeviceRequest{{Count: -1, Capabilities: [][]string{{"gpu"}}}}
	f := step{containers: []facts.Container{c}, procs: []gpuProc{{pid: 50, ctr: 1, sm: pct(50)}}}.facts(t0)
	f.GPUDevices = []facts.GPUDevice{{UUID: "GPU-0"}, {UUID: "GPU-1"}}
	st := Reconcile(inventory.Empty(), f, Rules{}).State
	f.Now = t0.Add(30 * time.Second)
	st = Reconcile(st, f, Rules{}).State
	if got := st.Containers[c1]; got.GPUAllocatedSeconds != 60 || got.GPUHeldSeconds != 30 {
		t.Fatalf("--gpus all on a 2-GPU host for 30 s: allocated %v held %v", got.GPUAllocatedSeconds, got.GPUHeldSeconds)
	}
	before, _ := json.Marshal(st.Containers)
	f.Now, f.DockerErr = t0.Add(60*time.Second), errDown
	st = Reconcile(st, f, Rules{}).State
	if after, _ := json.Marshal(st.Containers); string(after) != string(before) {
		t.Errorf("containers changed while Docker was down:\n%s\n%s", before, after)
	}
}
