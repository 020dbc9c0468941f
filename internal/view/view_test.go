package view

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func ip(v int) *int                  { return &v }
func i64(v int64) *int64             { return &v }
func tp(t time.Time) *inventory.Time { return inventory.TimePtr(t) }

var now = time.Date(2026, 2, 4, 12, 0, 0, 0, time.UTC)

// A state with a busy container (two processes sharing GPU 0), an idle
// one with a hostile name, a stopped one and a host process.
func testState() inventory.State {
	st := inventory.Empty()
	st.LastScan = tp(now)
	st.GPUs["GPU-a"] = inventory.GPU{Index: 0, Name: "H100"}
	st.GPUs["GPU-b"] = inventory.GPU{Index: 1, Name: "H100"}
	st.Containers["aaaaaaaaaaaa"] = inventory.Container{ID: "aaaaaaaaaaaa", Name: "train", User: "alice", Origin: inventory.OriginManaged,
		Status: "running", HasGPU: true, GPUDevices: []string{"0"}, CreatedAt: tp(now.Add(-2 * time.Hour)),
		GPUProcesses: []inventory.GPUProcess{
			{Pid: 1, GPUIndex: 0, GPUUUID: "GPU-a", GPUMemoryMB: i64(1000), SMUtilPercent: ip(70)},
			{Pid: 2, GPUIndex: 0, GPUUUID: "GPU-a", GPUMemoryMB: i64(500), SMUtilPercent: ip(50)},
		}}
	st.Containers["bbbbbbbbbbbb"] = inventory.Container{ID: "bbbbbbbbbbbb", Name: "x\x1b[2Jevil\u202e", User: "bob", Origin: inventory.OriginRawDocker,
		Status: "running", HasGPU: true, GPUDevices: []string{"1"}, CreatedAt: tp(now.Add(-time.Hour)),
		GPUProcesses: []inventory.GPUProcess{{Pid: 3, GPUIndex: 1, GPUUUID: "GPU-b", GPUMemoryMB: i64(4000), SMUtilPercent: ip(0)}}}
	st.Containers["cccccccccccc"] = inventory.Container{ID: "cccccccccccc", Name: "old", User: "alice", Origin: inventory.OriginCompose, Status: "exited"}
	st.HostProcesses["42"] = inventory.HostProcess{Pid: 42, User: "carol", Cmdline: "python run.py", GPUUUID: "GPU-b", GPUIndex: 1,
		GPUMemoryMB: i64(200), SMUtilPercent: ip(10), DetectedAt: tp(now.Add(-time.Minute))}
	return st
}

func byID(ws []Workload) map[string]Workload {
	m := map[string]Workload{}
	for _, w := range ws {
		m[w.ID] = w
	}
	return m
}

func TestRows(t *testing.T) {
	rows := byID(Rows(testState(), now))
	if len(rows) != 4 {
		t.Fatalf("%d rows: %v", len(rows), rows)
	}
	train := rows["aaaaaaaaaaaa"]
	if train.Kind != workload.KindContainer || len(train.GPUsInUse) != 1 || train.GPUsInUse[0] != "0" || train.Granted != "0" {
		t.Errorf("train: in use %v, granted %q", train.GPUsInUse, train.Granted)
	}
	if u := train.gpuUtil["0"]; u == nil || *u != 100 {
		t.Errorf("two processes on GPU 0 at 70%% and 50%%: %v, want 100 (capped)", u)
	}
	if p, ok := rows["PID:42"]; !ok || p.Kind != workload.KindHostProcess || p.User != "carol" {
		t.Errorf("host process row: %+v (rows %v)", p, rows)
	}
}

func TestFilterAndSort(t *testing.T) {
	all := Rows(testState(), now)
	running := Filter{}.Apply(all)
	if len(running) != 3 {
		t.Errorf("running: %d rows, want 3 (the exited container only with --all)", len(running))
	}
	if n := len(Filter{All: true}.Apply(all)); n != 4 {
		t.Errorf("--all: %d rows", n)
	}
	for _, w := range (Filter{User: "alice", All: true}).Apply(all) {
		if w.User != "alice" {
			t.Errorf("--user alice kept %s's row", w.User)
		}
	}
	if g := (Filter{GPU: ip(1)}).Apply(all); len(g) != 2 {
		t.Errorf("--gpu 1: %d rows, want 2", len(g))
	}
	if !Sort(running, "mem") {
		t.Fatal("mem is a sort key")
	}
	for i := 1; i < len(running); i++ {
		if ptr64(running[i-1].GPUMemoryMB) < ptr64(running[i].GPUMemoryMB) {
			t.Errorf("--sort mem: %v before %v", running[i-1].GPUMemoryMB, running[i].GPUMemoryMB)
		}
	}
	if Sort(running, "bogus") {
		t.Error("bogus is not a sort key")
	}
}

// Cells never carry a user's control characters to the terminal, and the
// GPU view lists each workload under its GPU.
func TestRenderIsSafe(t *testing.T) {
	st := testState()
	rows := Filter{All: true}.Apply(Rows(st, now))
	var b bytes.Buffer
	Render(&b, rows, Options{Wide: true})
	GPUView(&b, st, rows, Style{})
	out := b.String()
	if strings.ContainsAny(out, "\x1b\u202e") {
		t.Errorf("raw control characters in the output:\n%q", out)
	}
	var g bytes.Buffer
	GPUView(&g, st, Filter{}.Apply(Rows(st, now)), Style{})
	if !strings.Contains(g.String(), "100%") {
		t.Errorf("GPU view: no capped 100%% for train on GPU 0:\n%s", g.String())
	}
	if !strings.Contains(out, `x\x1b[2Jevil\u202e`) || !strings.Contains(out, "train") {
		t.Errorf("names missing or not escaped:\n%s", out)
	}
	if Cut("héllo wörld", 5) != "héll…" || Cut("ok", 5) != "ok" {
		t.Errorf("Cut: %q", Cut("héllo wörld", 5))
	}
}
