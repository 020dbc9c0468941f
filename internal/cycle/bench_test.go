//go:build integration

package cycle

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/dockertest"
)

// BenchmarkScanCycle measures one cycle (list, inspect, classify, diff,
// state write) against a real private dockerd holding 200 containers, half
// running, some with GPU requests: "inspect-all" without the event stream
// (as with --once), "steady" with the stream connected and the inspect
// cache warm (the daemon's normal cycle).
func BenchmarkScanCycle(b *testing.B) {
	d := dockertest.New(b, dockertest.Options{Runtimes: map[string]string{"nvidia": "runc"}, NvidiaHook: true})
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		s := dockertest.Spec{Name: fmt.Sprintf("bench-%03d", i), Start: i%2 == 0,
			Labels: map[string]string{"ds01.managed": "true", "ds01.user": fmt.Sprintf("user%d", i%7)}}
		if i%5 == 0 {
			s.Host.DeviceRequests = []container.DeviceRequest{{Count: -1, Capabilities: [][]string{{"gpu"}}}}
		}
		if _, err := d.Create(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
	run := func(b *testing.B, r *rig) {
		if s := r.det.Scan(ctx, true); s.Containers != 200 {
			b.Fatalf("first cycle saw %d containers: %s", s.Containers, s.DockerError)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if s := r.det.Scan(ctx, true); s.Containers != 200 || s.Events != 0 {
				b.Fatalf("steady cycle: %d containers, %d events", s.Containers, s.Events)
			}
		}
		b.ReportMetric(200, "containers")
	}
	b.Run("inspect-all", func(b *testing.B) { run(b, newRig(b, d)) })
	b.Run("steady", func(b *testing.B) {
		r := newRig(b, d)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		connected := make(chan struct{}, 1)
		go r.src.Watch(wctx, time.Time{}, func() {
			select {
			case connected <- struct{}{}:
			default:
			}
		}, zap.NewNop())
		select {
		case <-connected:
		case <-time.After(10 * time.Second):
			b.Fatal("event stream did not connect")
		}
		run(b, r)
	})
}
