package cycle

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/policy"
	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/internal/source/activity"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/proc"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestGoldenScanBytes runs the daemon's scan pipeline (gather, reconcile,
// the journal lines, the state-file encoder and the event log with seals)
// over seven scans of fixed facts, under a fixed clock and a fixed sealing
// key, and compares every byte it wrote with testdata/golden: the state
// file after each scan, the event log at the end, and the journal. A
// refactor must leave them as they are; a change of output is made on
// purpose with -update and reviewed in the diff.
//
// The facts: containers of every origin (ds01-managed, compose,
// devcontainer, raw docker, one ephemeral), GPU processes in containers
// and on the host (a long one, a short one, an excluded system one, one
// whose cgroup claims a container it does not run in), a process only
// accounting mode saw, a GPU held idle and then active again, a
// devcontainer's idle verdict given and ended, an owner change, a
// container that exits and is removed, a failed GPU sample, a Docker
// failure and its recovery, and an event-triggered scan.
//
// It needs no Docker and no root: the sources are scripted, /proc and the
// cgroups are a tree the test writes.
func TestGoldenScanBytes(t *testing.T) {
	g := newGoldenRig(t)
	g.run()

	var states bytes.Buffer
	for i, b := range g.states {
		fmt.Fprintf(&states, "=== state after scan %d ===\n", i+1)
		states.Write(b)
		if len(b) > 0 && b[len(b)-1] != '\n' {
			states.WriteByte('\n')
		}
	}
	events, err := os.ReadFile(g.eventsPath)
	if err != nil {
		t.Fatal(err)
	}
	compareGolden(t, "states.golden", states.Bytes())
	compareGolden(t, "events.golden", events)
	compareGolden(t, "journal.golden", g.journal.Bytes())
}

func compareGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if bytes.Equal(got, want) {
		return
	}
	gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < max(len(gl), len(wl)); i++ {
		var g, w string
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if g != w {
			t.Errorf("%s differs from %s at line %d (run with -update to rewrite it, then review the diff):\n got: %s\nwant: %s", name, path, i+1, g, w)
			return
		}
	}
	t.Errorf("%s differs from %s", name, path)
}

// goldenRig is the scripted sources, the /proc and cgroup tree, the clock
// and the scanner.
type goldenRig struct {
	t          *testing.T
	procRoot   string
	cgroupRoot string
	now        time.Time
	docker     *scriptedDocker
	gpus       *scriptedGPUs
	scanner    *Scanner
	statePath  string
	eventsPath string
	states     [][]byte
	journal    bytes.Buffer
}

type scriptedDocker struct {
	snap facts.Snapshot
	err  error
}

func (d *scriptedDocker) List(context.Context, bool) (facts.Snapshot, error) {
	if d.err != nil {
		return facts.Snapshot{}, d.err
	}
	return d.snap, nil
}

type scriptedGPUs struct {
	rep gpu.Report
	err error
}

func (g *scriptedGPUs) Scan(context.Context) (gpu.Report, error) {
	if g.err != nil {
		return gpu.Report{}, g.err
	}
	return g.rep, nil
}

var goldenT0 = time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)

// The uptime the tree reports: boot is this long before the first sample.
const goldenUptime = 100000

func goldenID(c byte) string { return strings.Repeat(string(c), 64) }

func newGoldenRig(t *testing.T) *goldenRig {
	dir := t.TempDir()
	g := &goldenRig{t: t, procRoot: filepath.Join(dir, "proc"), cgroupRoot: filepath.Join(dir, "cgroup"),
		now: goldenT0, docker: &scriptedDocker{}, gpus: &scriptedGPUs{},
		statePath: filepath.Join(dir, "state.json"), eventsPath: filepath.Join(dir, "events.jsonl")}
	g.write("uptime", fmt.Sprintf("%d.00 0.00\n", goldenUptime))

	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "" // the journal stamps its own lines
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(&g.journal), zapcore.DebugLevel))
	users := map[uint32]string{0: "root", 1000: "alice", 1001: "bob", 1002: "carol"}
	g.scanner = New(Config{
		Files:  deliver.Config{StatePath: g.statePath, EventsPath: g.eventsPath, Key: seal.NewKey(bytes.Repeat([]byte{0x5a}, 32)), KeyCreated: true},
		Docker: g.docker, GPU: g.gpus, Proc: proc.New(g.procRoot),
		Users:    func(_ context.Context, uid uint32) (string, bool) { n, ok := users[uid]; return n, ok },
		Activity: activity.New(g.procRoot, g.cgroupRoot),
		Rules: reconcile.Rules{Excluded: reconcile.DefaultExcluded, IdleThreshold: 5, IdleAfter: time.Minute, ConfirmAfter: 15 * time.Second, Interval: time.Minute,
			Policy: policy.FromFlags(policy.Thresholds{GPUPercent: 5, CPUPercent: 2, NetBytes: 1 << 20, Window: 2, Grace: time.Minute})},
		Now: func() time.Time { return g.now },
	}, log)
	return g
}

func (g *goldenRig) write(rel, content string) {
	g.t.Helper()
	p := filepath.Join(g.procRoot, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		g.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		g.t.Fatal(err)
	}
}

func (g *goldenRig) writeCgroup(rel, content string) {
	g.t.Helper()
	p := filepath.Join(g.cgroupRoot, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		g.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		g.t.Fatal(err)
	}
}

// process writes /proc/<pid>: its cgroup, real UID, stat (CPU ticks and
// start time in ticks since boot) and command line.
func (g *goldenRig) process(pid int, cgroup string, uid uint32, cpuTicks, startTicks uint64, argv ...string) {
	d := strconv.Itoa(pid)
	g.write(d+"/cgroup", "0::"+cgroup+"\n")
	g.write(d+"/status", fmt.Sprintf("Name:\t%s\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t%d\t%d\t%d\t%d\n", filepath.Base(argv[0]), uid, uid, uid, uid))
	g.write(d+"/stat", fmt.Sprintf("%d (%s) S 1 %d %d 0 -1 4194560 100 0 0 0 %d %d 0 0 20 0 4 0 %d 1000000 100 18446744073709551615\n",
		pid, filepath.Base(argv[0]), pid, pid, cpuTicks/2, cpuTicks-cpuTicks/2, startTicks))
	g.write(d+"/cmdline", strings.Join(argv, "\x00")+"\x00")
}

func (g *goldenRig) exit(pid int) {
	if err := os.RemoveAll(filepath.Join(g.procRoot, strconv.Itoa(pid))); err != nil {
		g.t.Fatal(err)
	}
}

func scope(id string) string { return "/system.slice/docker-" + id + ".scope" }

// counters writes a container's cgroup v2 counters and its init's
// network counters.
func (g *goldenRig) counters(id string, initPid int, cpuUsec, rx, tx int64) {
	dir := scope(id)
	g.writeCgroup(dir+"/cpu.stat", fmt.Sprintf("usage_usec %d\nuser_usec %d\nsystem_usec %d\n", cpuUsec, cpuUsec/2, cpuUsec-cpuUsec/2))
	g.writeCgroup(dir+"/memory.current", "104857600\n")
	g.writeCgroup(dir+"/memory.stat", "anon 50000000\ninactive_file 4194304\n")
	g.writeCgroup(dir+"/io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
	g.write(strconv.Itoa(initPid)+"/net/dev", "Inter-|   Receive                                                |  Transmit\n"+
		" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"+
		"    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n"+
		fmt.Sprintf("  eth0: %d 10 0 0 0 0 0 0 %d 20 0 0 0 0 0 0\n", rx, tx))
}

func intp(v int) *int       { return &v }
func int64p(v int64) *int64 { return &v }

// at is goldenT0 plus s seconds.
func at(s int) time.Time { return goldenT0.Add(time.Duration(s) * time.Second) }

// startTicks is the start time, in ticks since boot, of a process that
// started s seconds after goldenT0 (boot is goldenUptime seconds before
// the first sample, at 10 s).
func startTicks(s int) uint64 { return uint64((goldenUptime - 10 + s) * proc.ClockTicks) }

// sample takes one GPU sample at s seconds.
func (g *goldenRig) sample(s int) {
	g.t.Helper()
	g.now = at(s)
	g.scanner.Sampler().Sample(context.Background())
}

// scan runs one scan at s seconds and keeps the state file it wrote.
func (g *goldenRig) scan(s int, full bool) {
	g.t.Helper()
	g.now = at(s)
	sum := g.scanner.Scan(context.Background(), full)
	if sum.StateWriteErr != nil || sum.EventAppendErr != nil {
		g.t.Fatalf("scan at %d s: state %v, events %v", s, sum.StateWriteErr, sum.EventAppendErr)
	}
	b, err := os.ReadFile(g.statePath)
	if err != nil {
		g.t.Fatal(err)
	}
	g.states = append(g.states, b)
}

func (g *goldenRig) run() {
	A, B, C, D, E, F := goldenID('a'), goldenID('b'), goldenID('c'), goldenID('d'), goldenID('e'), goldenID('f')
	hour := at(-3600)
	gpuAll := []facts.DeviceRequest{{Count: -1, Capabilities: [][]string{{"gpu"}}}}

	managed := facts.Container{ID: A, Name: "alice-train", Image: "ds01/pytorch:2.4", Status: "running", Pid: 2001, Created: hour, StartedAt: hour,
		Labels: map[string]string{"ds01.managed": "true", "ds01.user": "alice", "ds01.gpu.allocated": "0"},
		Env:    []string{"NVIDIA_VISIBLE_DEVICES=0"}, Runtime: "nvidia", RuntimePath: "/usr/bin/nvidia-container-runtime",
		Mounts: []facts.Mount{{Type: "bind", Source: "/home/alice/data"}}}
	compose := facts.Container{ID: B, Name: "proj-trainer-1", Image: "proj-trainer", Status: "running", Pid: 2002, Created: hour, StartedAt: hour,
		Labels:  map[string]string{"com.docker.compose.project": "proj", "com.docker.compose.project.working_dir": "/home/bob/proj", "com.docker.compose.service": "trainer"},
		Runtime: "runc", RuntimePath: "runc", DeviceRequests: gpuAll}
	devc := facts.Container{ID: C, Name: "vsc-ws-1a2b3c", Image: "vsc-ws-1a2b3c-uid", Status: "running", Pid: 2003, Created: hour, StartedAt: hour,
		Labels:  map[string]string{"devcontainer.local_folder": "/home/carol/ws", "devcontainer.config_file": "/home/carol/ws/.devcontainer/devcontainer.json"},
		Runtime: "runc", RuntimePath: "runc"}
	raw := facts.Container{ID: D, Name: "job._.1001", Image: "ubuntu:24.04", Status: "running", Pid: 2004, Created: hour, StartedAt: hour,
		Labels: map[string]string{}, Env: []string{"NVIDIA_VISIBLE_DEVICES=1"}, Runtime: "nvidia", RuntimePath: "/usr/bin/nvidia-container-runtime"}
	shared := facts.Container{ID: E, Name: "shared-box", Image: "ubuntu:24.04", Status: "running", Pid: 2005, Created: hour, StartedAt: hour,
		Labels: map[string]string{"ds01.user": "alice"}, Runtime: "runc", RuntimePath: "runc", DeviceRequests: gpuAll}

	// Container init processes and their GPU processes.
	g.process(2001, scope(A), 0, 100, startTicks(-3600), "/sbin/docker-init", "--", "bash")
	g.process(2002, scope(B), 0, 100, startTicks(-3600), "/bin/sh", "-c", "python train.py")
	g.process(2003, scope(C), 1002, 100, startTicks(-3600), "/bin/sh", "-c", "sleep infinity")
	g.process(2004, scope(D), 1001, 100, startTicks(-3600), "/bin/bash")
	g.process(2005, scope(E), 0, 100, startTicks(-3600), "/bin/bash")
	g.process(2101, scope(A), 1000, 5000, startTicks(-3500), "python3", "train.py", "--epochs", "10")
	g.process(2102, scope(B), 1001, 5000, startTicks(-3500), "python", "train.py")
	g.process(2105, scope(E), 1000, 5000, startTicks(-3500), "python3", "notebook.py")
	// Host processes: alice's long job (a secret on its command line),
	// root's nvidia-smi (left out by name), carol's process in her own
	// tree under a scope named after alice's container.
	g.process(3001, "/user.slice/user-1000.slice/session-4.scope", 1000, 300, startTicks(5), "python3", "serve.py", "--token=abc123", "--port", "8000")
	g.process(3003, "/system.slice/nvidia-smi.service", 0, 1, startTicks(8), "nvidia-smi")
	g.process(3004, "/user.slice/user-1002.slice/user@1002.service/app.slice/docker-"+A+".scope", 1002, 50, startTicks(9), "python3", "claim.py")

	devices := func(used0, used1, used2 int64) []facts.GPUDevice {
		name := "NVIDIA H100 80GB HBM3"
		on, off := true, false
		return []facts.GPUDevice{
			{Index: 0, UUID: "GPU-0000", Name: name, MemoryTotalMiB: int64p(81559), MemoryUsedMiB: int64p(used0), Util: intp(80), Accounting: &on},
			{Index: 1, UUID: "GPU-1111", Name: name, MemoryTotalMiB: int64p(81559), MemoryUsedMiB: int64p(used1), Util: intp(0), Accounting: &off},
			{Index: 2, UUID: "GPU-2222", Name: name, MemoryTotalMiB: int64p(81559), MemoryUsedMiB: int64p(used2), Util: intp(45)},
		}
	}
	gp := func(pid, idx int, mem int64, sm *int) facts.GPUProcess {
		return facts.GPUProcess{Pid: pid, GPUIndex: idx, GPUUUID: "GPU-" + strings.Repeat(strconv.Itoa(idx), 4), MIGIndex: -1, MemoryMiB: int64p(mem), SMUtil: sm}
	}
	// bSM is the compose container's utilisation: 0 (idle) until it wakes.
	procs := func(bSM int, host ...facts.GPUProcess) []facts.GPUProcess {
		out := []facts.GPUProcess{gp(2101, 0, 20000, intp(80)), gp(3003, 0, 10, intp(0)), gp(2102, 1, 30000, intp(bSM)), gp(2105, 2, 8000, intp(30))}
		return append(out, host...)
	}
	h1 := gp(3001, 2, 4000, intp(60))
	h2 := gp(3002, 1, 500, intp(90))
	h4 := gp(3004, 2, 700, nil) // utilisation unknown
	snap := func(s int, list ...facts.Container) facts.Snapshot {
		return facts.Snapshot{Containers: ptrs(list), Checkpoint: at(s - 2), ListStart: at(s - 1)}
	}
	// Activity: the devcontainer stays near-idle until scan 6; the others
	// work.
	cpu := func(scan int) {
		g.counters(A, 2001, int64(scan)*15_000_000, int64(scan)*5_000_000, int64(scan)*4_000_000)
		g.counters(B, 2002, int64(scan)*30_000_000, int64(scan)*1_000, int64(scan)*1_000)
		cUsec := int64(1_000_000 + scan*100_000)
		if scan >= 6 {
			cUsec += int64(scan-5) * 20_000_000
		}
		g.counters(C, 2003, cUsec, int64(scan)*2_000, int64(scan)*1_000)
		g.counters(D, 2004, int64(scan)*3_000_000, 0, 0)
		g.counters(E, 2005, int64(scan)*1_000_000, 500, 500)
	}

	// Scan 1 (30 s): everything is new; the host processes are pending.
	g.gpus.rep = gpu.Report{Processes: procs(0, h1, h4), Devices: devices(20010, 30000, 12700)}
	cpu(1)
	g.docker.snap = snap(30, managed, compose, devc, raw, shared)
	g.sample(10)
	g.sample(20)
	g.scan(30, true)

	// Scan 2 (60 s): the host processes are confirmed; an ephemeral
	// container lived between the scans.
	cpu(2)
	s2 := snap(60, managed, compose, devc, raw, shared)
	s2.Ephemeral = []facts.Container{{ID: F, Name: "quick-run", Image: "alpine", Status: "exited", Created: at(35), Gone: at(42),
		Labels: map[string]string{"ds01.user": "carol"}}}
	g.docker.snap = s2
	g.sample(40)
	g.sample(50)
	g.scan(60, true)

	// Scan 3 (90 s): bob's short process lives between two samples; the
	// shared box changes hands (a label update); accounting mode saw a
	// process no list did. The compose container's GPU is held idle.
	cpu(3)
	shared.Labels = map[string]string{"ds01.user": "bob"}
	g.docker.snap = snap(90, managed, compose, devc, raw, shared)
	g.process(3002, "/user.slice/user-1001.slice/session-7.scope", 1001, 20, startTicks(65), "python3", "probe.py")
	g.gpus.rep = gpu.Report{Processes: procs(0, h1, h2, h4), Devices: devices(20010, 30500, 12700)}
	g.sample(70)
	g.exit(3002)
	g.gpus.rep = gpu.Report{Processes: procs(0, h1, h4), Devices: devices(20010, 30000, 12700),
		Unattributed: []facts.Unattributed{{Pid: 4000000, GPUIndex: 0, GPUUUID: "GPU-0000", ActiveSeconds: 0.8, StartTime: uint64(at(72).UnixMicro())}}}
	g.sample(80)
	g.gpus.rep.Unattributed = nil
	g.scan(90, true)

	// Scan 4 (105 s): Docker's events say the raw container exited; an
	// event-triggered scan inspects it alone.
	raw.Status, raw.Pid, raw.FinishedAt, raw.ExitCode = "exited", 0, at(100), 1
	s4 := snap(105, managed, compose, devc, raw, shared)
	s4.Incremental, s4.Changed = true, map[string]bool{D: true}
	g.docker.snap = s4
	g.exit(2004)
	g.sample(100)
	g.scan(105, false)

	// Scan 5 (135 s): a GPU sample fails; Docker fails at the scan (its
	// containers are kept as they were); alice's host job ends.
	cpu(5)
	g.gpus.err = errors.New("nvml: GPU is lost")
	g.sample(115)
	g.gpus.err = nil
	g.exit(3001)
	g.gpus.rep = gpu.Report{Processes: procs(0, h4), Devices: devices(20010, 30000, 8700)}
	g.sample(125)
	g.docker.err = errors.New("Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
	g.scan(135, true)

	// Scan 6 (165 s): Docker is back; the raw container is removed; the
	// devcontainer and the compose container's GPU wake up.
	g.docker.err = nil
	cpu(6)
	g.docker.snap = snap(165, managed, compose, devc, shared)
	g.gpus.rep = gpu.Report{Processes: procs(70, h4), Devices: devices(20010, 30000, 8700)}
	g.sample(145)
	g.sample(155)
	g.scan(165, true)

	// Scan 7 (195 s): nothing changes but time.
	cpu(7)
	g.docker.snap = snap(195, managed, compose, devc, shared)
	g.sample(175)
	g.sample(185)
	g.scan(195, true)
}
