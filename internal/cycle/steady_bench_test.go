package cycle

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// BenchmarkSteadyCycleOwnCost is the daemon's own share of a steady cycle
// at 1,000 containers (reconcile, state encoding and write), without
// Docker: the containers come from a fixed snapshot.
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
			c.Status, c.StartedAt = "running", time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
		}
		list = append(list, c)
	}
	files := testutil.NewFiles(b)
	s := New(Config{Files: deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}, Docker: listed{Containers: ptrs(list)}, Proc: proc.New(b.TempDir())}, nil)
	ctx := context.Background()
	if sum := s.Scan(ctx, true); sum.Containers != 1000 || !strings.HasPrefix(sum.StatusLine(), "1000 containers") {
		b.Fatal(sum.StatusLine())
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Scan(ctx, true)
	}
}
