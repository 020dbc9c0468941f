package cycle

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
)

// listed is a Docker source that reports a fixed snapshot; gpuList a GPU
// source that reports fixed processes. The facts about those PIDs come
// from the fixture /proc trees, read for real.
type listed facts.Snapshot

func (l listed) List(context.Context, bool) (facts.Snapshot, error) { return facts.Snapshot(l), nil }

// ptrs is a list as the Docker source's snapshots hold it.
func ptrs(list []facts.Container) []*facts.Container {
	out := make([]*facts.Container, len(list))
	for i := range list {
		out[i] = &list[i]
	}
	return out
}

type gpuList []facts.GPUProcess

func (g gpuList) Scan(context.Context) (gpu.Report, error) { return gpu.Report{Processes: g}, nil }

func procsFor(pids ...int) gpuList {
	var out gpuList
	for i, p := range pids {
		m := int64(100 * (i + 1))
		out = append(out, facts.GPUProcess{Pid: p, GPUIndex: i % 2, GPUUUID: "GPU-" + strconv.Itoa(i%2), MIGIndex: -1, MemoryMiB: &m})
	}
	return out
}

func fixtureScanner(t *testing.T, keep bool, containers []facts.Container, procs gpuList) (*Scanner, *testutil.Files) {
	files := testutil.NewFiles(t)
	return New(Config{
		Files:  deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath},
		Docker: listed{Containers: ptrs(containers)}, GPU: procs,
		Proc: proc.New(filepath.Join("..", "source", "proc", "testdata", "proc")),
		// confirmed at the second scan's sample
		Rules: reconcile.Rules{Excluded: reconcile.DefaultExcluded, KeepSecrets: keep, ConfirmAfter: time.Nanosecond},
	}, nil), files
}

func TestAttributionOverFixtures(t *testing.T) {
	dockerA := strings.Repeat("a", 64)
	ctr := facts.Container{ID: dockerA, Name: "a", Status: "running", Pid: 1033, Labels: map[string]string{},
		DeviceRequests: []facts.DeviceRequest{{DeviceIDs: []string{"1"}, Capabilities: [][]string{{"gpu"}}}}}
	// 1002: in docker container aaaa…; 1007: podman; 1020: host with
	// secrets; 1021: vanished between reads; 1022: hostile command line;
	// 1023: root's nvidia-smi; 1030: a user's scope named after aaaa…;
	// 1031 and 1032: a user's exec -a Xorg and exec -a nvidia-persistenced;
	// 99999: no /proc entry at all.
	s, files := fixtureScanner(t, false, []facts.Container{ctr}, procsFor(1002, 1007, 1020, 1021, 1022, 1023, 1030, 1031, 1032, 99999))
	ctx := context.Background()
	s.Scan(ctx, true)
	sum := s.Scan(ctx, true) // the second sighting confirms host processes
	st := sum.State

	c := st.Containers[dockerA[:12]]
	if len(c.GPUProcesses) != 1 || c.GPUProcesses[0].Pid != 1002 || !c.GPUProcesses[0].OutsideGPUDevices || c.GPUWithoutAccess || !c.HasGPU {
		t.Errorf("container: %+v", c)
	}
	if len(st.HostProcesses) != 6 {
		t.Fatalf("host processes: %+v", st.HostProcesses)
	}
	// 1007 runs in a libpod scope inside user@1000.service: its user's
	// (rootless podman, or a scope named like one), the claim recorded.
	if p := st.HostProcesses["1007"]; p.Runtime != proc.RuntimePodman || p.ClaimedContainer != strings.Repeat("c", 12) {
		t.Errorf("rootless podman process: %+v", p)
	}
	for pid, want := range map[string]string{"1030": "aaaaaaaaaaaa", "1031": "", "1032": ""} {
		if p := st.HostProcesses[pid]; p.UID != 1001 || p.ClaimedContainer != want {
			t.Errorf("host process %s: %+v", pid, p)
		}
	}
	if sum.Excluded != 1 {
		t.Errorf("%d processes excluded, want 1 (root's nvidia-smi)", sum.Excluded)
	}
	secret := st.HostProcesses["1020"]
	if secret.Cmdline != "python3 serve.py --token=*** --password *** HF_TOKEN=*** --epochs 3" || secret.UID != 4321 || secret.User != "4321" {
		t.Errorf("redacted host process: %+v", secret)
	}
	for _, e := range files.NewEvents() {
		if strings.Contains(string(e.Details), "abc123") || strings.Contains(string(e.Details), "hunter2") {
			t.Errorf("secret in event: %s", e.Details)
		}
	}
	if evil := st.HostProcesses["1022"]; evil.Cmdline != "evil \x1b[31mred line\nbreak \uFFFD" {
		t.Errorf("hostile cmdline kept as data: %q", evil.Cmdline)
	}
	var runtimes []string
	for _, o := range st.OtherGPUProcesses {
		runtimes = append(runtimes, o.Runtime+":"+strconv.Itoa(o.Pid))
	}
	if strings.Join(runtimes, " ") != "unknown:99999" || st.OtherGPUProcesses[0].Error == "" {
		t.Errorf("other runtimes: %v %+v", runtimes, st.OtherGPUProcesses)
	}
	if sum.EventCounts[event.HostProcessDiscovered] != 6 {
		t.Errorf("events of the second scan: %v", sum.EventCounts)
	}

	// --keep-secrets records the command line as it is.
	s, _ = fixtureScanner(t, true, nil, procsFor(1020))
	st = s.Scan(ctx, true).State
	if !strings.Contains(st.PendingProcesses["1020"].Cmdline, "--token=abc123 --password hunter2") {
		t.Errorf("keep-secrets: %q", st.PendingProcesses["1020"].Cmdline)
	}
}

// The journal lines of a scan never carry a masked secret either.
func TestSecretsStayOutOfTheJournal(t *testing.T) {
	files := testutil.NewFiles(t)
	log, lines := testutil.Logger()
	s := New(Config{
		Files: deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}, Docker: listed{}, GPU: procsFor(1020),
		Proc:  proc.New(filepath.Join("..", "source", "proc", "testdata", "proc")),
		Now:   ticking(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Second),
		Rules: reconcile.Rules{Excluded: reconcile.DefaultExcluded, ConfirmAfter: time.Nanosecond},
	}, log)
	s.Scan(context.Background(), true)
	if sum := s.Scan(context.Background(), true); sum.Events != 1 {
		t.Fatalf("events: %v", sum.EventCounts)
	}
	if out := lines(); !strings.Contains(out, "host GPU process discovered") || strings.Contains(out, "hunter2") || strings.Contains(out, "abc123") {
		t.Errorf("journal: %s", out)
	}
}

// ticking is a clock that moves on by step at each reading.
func ticking(t time.Time, step time.Duration) func() time.Time {
	var mu sync.Mutex
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(step)
		return t
	}
}
