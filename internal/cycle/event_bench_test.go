package cycle

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// churning is a Containers source for the event path's own cost: a fixed
// inventory of idle containers plus one that changes every call, the way
// the Docker source reports an event-triggered scan (no list call).
type churning struct {
	idle []*facts.Container
	n    int
}

func (c *churning) List(context.Context, bool) (facts.Snapshot, error) {
	c.n++
	out := make([]*facts.Container, len(c.idle), len(c.idle)+1)
	copy(out, c.idle)
	churn := &facts.Container{ID: fmt.Sprintf("%012x%052d", c.n, 0), Name: "churn-" + strconv.Itoa(c.n), Image: "img", Status: "running", Pid: 0,
		Created: time.Unix(int64(c.n), 0), Labels: map[string]string{}}
	out = append(out, churn)
	return facts.Snapshot{Containers: out, Incremental: true, Changed: map[string]bool{churn.ID: true}, Checkpoint: time.Now()}, nil
}

// BenchmarkEventCycle is the daemon's side of one event-triggered scan
// (reconcile and deliver, Docker's cost left out) among 200 and 2,000 idle
// containers: the churn benchmark's CPU ratio comes from here.
func BenchmarkEventCycle(b *testing.B) {
	for _, idle := range []int{200, 2000} {
		b.Run(strconv.Itoa(idle), func(b *testing.B) {
			src := &churning{}
			for i := 0; i < idle; i++ {
				src.idle = append(src.idle, &facts.Container{ID: fmt.Sprintf("%012x%052d", 1<<40+i, 0), Name: fmt.Sprintf("idle-%04d", i), Image: "img",
					Status: "exited", Created: time.Unix(1, 0), Labels: map[string]string{"ds01.user": "user" + strconv.Itoa(i%40)}})
			}
			files := testutil.NewFiles(b)
			cfg := deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}
			if os.Getenv("DS01_BENCH_SEAL") != "" { // sealed, as the daemon runs by default
				cfg.Key, cfg.KeyCreated = seal.NewKey(bytes.Repeat([]byte{7}, seal.KeySize)), true
			}
			s := New(Config{Files: cfg, Docker: src, DryRun: os.Getenv("DRY") != ""}, nil)
			ctx := context.Background()
			s.Scan(ctx, true)
			b.ResetTimer()
			cpu0 := cpuTime()
			defer func() { b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op") }()
			for i := 0; i < b.N; i++ {
				if sum := s.Scan(ctx, false); sum.Containers != idle+1 {
					b.Fatalf("%d containers", sum.Containers)
				}
			}
		})
	}
}

// cpuTime is the process's user and system CPU time so far: the daemon's
// cost, without the time it waits for the disk.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
