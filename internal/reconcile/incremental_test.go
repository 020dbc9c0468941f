package reconcile

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// An event-triggered cycle reuses the classification of stopped
// containers the snapshot does not name as changed: the state must be the
// one a full cycle derives from the same facts, and a container whose
// facts changed must be classified again.
func TestIncrementalCycleMatchesFull(t *testing.T) {
	list := []facts.Container{}
	for i := 1; i <= 6; i++ {
		c := ctr(i, []string{"exited", "created", "running"}[i%3])
		if i == 4 {
			c.Labels = map[string]string{"ds01.user": "alice", "devcontainer.local_folder": "/home/bob/x"} // a conflict
		}
		list = append(list, c)
	}
	s := step{containers: list}
	prev := Reconcile(inventory.Empty(), s.facts(t0), Rules{}).State

	// The events named container 1 (relabelled); the rest are the last
	// snapshot's.
	next := append([]facts.Container{}, list...)
	next[0].Labels = map[string]string{"ds01.user": "carol"}
	s = step{containers: next}
	now := t0.Add(time.Second)
	incr := s.facts(now)
	incr.Docker.Incremental, incr.Docker.Changed = true, map[string]bool{next[0].ID: true}
	got := Reconcile(prev, incr, Rules{}).State
	want := Reconcile(prev, s.facts(now), Rules{}).State
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Fatalf("incremental cycle differs from a full one:\n%s\n---\n%s", gb, wb)
	}
	if u := got.Containers[c1].User; u != "carol" {
		t.Errorf("a changed container kept its old classification: user %q", u)
	}
	for k, c := range got.Containers {
		if w := want.Containers[k]; !statefile.Equal(&c, &w) {
			t.Errorf("%s: %+v, want %+v", k, c, want.Containers[k])
		}
	}
}

// The same, cycle after cycle, through GPU use, a failing GPU source and
// its recovery: a container that stops while the GPU source fails keeps
// stale GPU fields, and must not be taken over as settled afterwards.
func TestIncrementalCyclesThroughGPUFailure(t *testing.T) {
	list := func(stopped bool) []facts.Container {
		var out []facts.Container
		for i := 1; i <= 5; i++ {
			status := "exited"
			if i == 3 && !stopped {
				status = "running"
			}
			out = append(out, ctr(i, status))
		}
		return out
	}
	busy := []gpuProc{{pid: 4003, ctr: 3, start: 9, sm: pct(80)}}
	steps := []step{
		{containers: list(false), procs: busy},
		{containers: list(false), procs: busy},
		{containers: list(false), gpuErr: errGPU},
		{containers: list(true), gpuErr: errGPU}, // stops while NVML fails
		{containers: list(true), gpuErr: errGPU},
		{containers: list(true)}, // NVML is back
		{containers: list(true)},
	}
	stopsAt := 3 // stopping is an event: a new inspect
	prev := inventory.Empty()
	for i, s := range steps {
		now := t0.Add(time.Duration(i) * 30 * time.Second)
		incr := s.facts(now)
		incr.Docker.Incremental, incr.Docker.Changed = i > 0, map[string]bool{}
		if i == stopsAt {
			incr.Docker.Changed[id(3)] = true
		}
		got := Reconcile(prev, incr, Rules{})
		want := Reconcile(prev, s.facts(now), Rules{})
		gb, _ := json.Marshal(got.State)
		wb, _ := json.Marshal(want.State)
		if string(gb) != string(wb) {
			t.Fatalf("cycle %d: incremental differs from full:\n%s\n---\n%s", i, gb, wb)
		}
		if g, w := describe(got.Transitions), describe(want.Transitions); !reflect.DeepEqual(g, w) {
			t.Fatalf("cycle %d: transitions %q, want %q", i, g, w)
		}
		prev = got.State
	}
	if c := prev.Containers[id(3)[:12]]; len(c.GPUProcesses) != 0 || c.GPUHeldSeconds == 0 {
		t.Errorf("container 3 at the end: %d GPU processes, %v GPU-seconds held", len(c.GPUProcesses), c.GPUHeldSeconds)
	}
}
