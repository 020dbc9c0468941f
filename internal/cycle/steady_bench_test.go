package cycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/source/activity"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// BenchmarkSteadyCycleOwnCost is the daemon's own share of a steady cycle
// at 1,000 containers (reconcile, state encoding and write), without
// Docker: the containers come from a fixed snapshot, 300 of them running.
// In "idle" nothing changes between cycles. In "activity" the running
// containers' cgroups (a v2 fixture tree) count more CPU time every cycle,
// as busy containers do, so each cycle reads 300 cgroups and re-encodes
// 300 containers.
func BenchmarkSteadyCycleOwnCost(b *testing.B) {
	var list []facts.Container
	for i := 0; i < 1000; i++ {
		id := fmt.Sprintf("%012x", i+1) + strings.Repeat("0", 52)
		c := facts.Container{ID: id, Name: fmt.Sprintf("bench-%04d", i), Image: "ds01/pytorch:latest", Status: "exited",
			Created: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Labels: map[string]string{"ds01.managed": "true", "ds01.user": fmt.Sprintf("user%02d", i%40)}}
		if i%4 == 0 {
			c.DeviceRequests = []facts.DeviceRequest{{Count: -1, Capabilities: [][]string{{"gpu"}}}}
		}
		if i < 300 {
			c.Status, c.StartedAt, c.Pid = "running", time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), 10000+i
		}
		list = append(list, c)
	}
	for _, busy := range []bool{false, true} {
		name := "idle"
		if busy {
			name = "activity"
		}
		b.Run(name, func(b *testing.B) {
			files := testutil.NewFiles(b)
			cfg := Config{Files: deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}, Docker: listed{Containers: ptrs(list)}, Proc: proc.New(b.TempDir())}
			var tick func(n int)
			if busy {
				var r *activity.Reader
				r, tick = activityTree(b, list)
				cfg.Activity = r
			}
			s := New(cfg, nil)
			ctx := context.Background()
			for i := 0; i < 2; i++ { // the second reads the cgroups' first rates
				if tick != nil {
					tick(i)
				}
				if sum := s.Scan(ctx, true); sum.Containers != 1000 || !strings.HasPrefix(sum.StatusLine(), "1000 containers") {
					b.Fatal(sum.StatusLine())
				}
			}
			if busy {
				if c := s.Reported().Containers[list[0].ID[:12]]; c.CPUPercent == nil {
					b.Fatalf("no cpu_percent for a running container: %+v", c)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if tick != nil {
					b.StopTimer()
					tick(i + 2)
					b.StartTimer()
				}
				s.Scan(ctx, true)
			}
		})
	}
}

// activityTree makes a cgroup v2 fixture tree (systemd driver) for the
// running containers of list, and returns a reader of it and a function
// that sets every cgroup's CPU time for cycle n.
func activityTree(b *testing.B, list []facts.Container) (*activity.Reader, func(n int)) {
	root := b.TempDir()
	procRoot, cgRoot := filepath.Join(root, "proc"), filepath.Join(root, "cgroup")
	write := func(path, data string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	var dirs []string
	for _, c := range list {
		if c.Pid <= 0 {
			continue
		}
		scope := "/system.slice/docker-" + c.ID + ".scope"
		pd := filepath.Join(procRoot, strconv.Itoa(c.Pid))
		write(filepath.Join(pd, "cgroup"), "0::"+scope+"\n")
		write(filepath.Join(pd, "net", "dev"), "Inter-|   Receive                                                |  Transmit\n"+
			" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"+
			"    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n"+
			"  eth0:  123456     100    0    0    0     0          0         0    65432      80    0    0    0     0       0          0\n")
		dir := filepath.Join(cgRoot, scope)
		write(filepath.Join(dir, "memory.current"), "104857600\n")
		write(filepath.Join(dir, "memory.stat"), "anon 52428800\nfile 52428800\ninactive_file 10485760\nactive_file 41943040\n")
		write(filepath.Join(dir, "io.stat"), "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
		dirs = append(dirs, dir)
	}
	tick := func(n int) {
		for i, dir := range dirs {
			write(filepath.Join(dir, "cpu.stat"), fmt.Sprintf("usage_usec %d\nuser_usec 0\nsystem_usec 0\n", n*(1000+i)*1000))
		}
	}
	return activity.New(procRoot, cgRoot), tick
}
