package reconcile

import (
	"testing"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// mallory starts a container with --cgroup-parent=/docker/<alice's full
// id> (cgroupfs driver): its cgroup path names alice's container first.
// Its processes are mallory's container's, never alice's; only a
// container Docker does not list (docker in docker) falls back to the
// outer one.
func TestInnermostListedContainerWins(t *testing.T) {
	alice, mallory := ctr(1, "running"), ctr(2, "running")
	mallory.Labels["ds01.user"] = "mallory"
	cg := func(path string) proc.ContainerRef { return proc.ParseCgroup([]byte("12:pids:" + path + "\n")) }
	outer := "/docker/" + id(1)
	inner := outer + "/" + id(2)
	for _, tc := range []struct {
		name   string
		list   []facts.Container
		want   string // container credited
		inits  map[string]facts.Init
		procNS string
	}{
		{"both listed", []facts.Container{alice, mallory}, id(2)[:12],
			map[string]facts.Init{id(1): {Cgroup: cg(outer), PidNS: "pid:[1]"}, id(2): {Cgroup: cg(inner), PidNS: "pid:[2]"}}, "pid:[2]"},
		{"the inner one unlisted (docker in docker)", []facts.Container{alice}, id(1)[:12],
			map[string]facts.Init{id(1): {Cgroup: cg(outer), PidNS: "pid:[1]"}}, "pid:[2]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := facts.Scan{Now: t0, Users: map[uint32]string{1001: "bob"}, Inits: tc.inits}
			f.Docker = facts.Snapshot{Containers: ptrs(tc.list)}
			f.GPU = []facts.GPUProcess{{Pid: 77, GPUUUID: "GPU-0", MIGIndex: -1, MemoryMiB: mib(1)}}
			f.Procs = map[int]facts.Proc{77: {Cgroup: cg(inner), UID: 1001, StartTime: 5, PidNS: tc.procNS}}
			st := Reconcile(inventory.Empty(), f, Rules{}).State
			for k, c := range st.Containers {
				got := len(c.GPUProcesses) == 1
				if got != (k == tc.want) {
					t.Errorf("container %s (%s) has %d GPU processes; want the process in %s", k, c.User, len(c.GPUProcesses), tc.want)
				}
			}
			if len(st.PendingProcesses) != 0 {
				t.Errorf("a host process: %+v", st.PendingProcesses)
			}
		})
	}
}
