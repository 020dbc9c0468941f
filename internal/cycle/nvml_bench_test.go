package cycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/gpu/gputest"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// BenchmarkNVMLCycle measures a whole cycle (NVML, /proc, reconcile, state
// and event writes) with go-nvml's mock at 8 GPUs x 50 host processes, with
// and without the utilisation calls. make bench prints the ratio; the goal
// is <= 1.2.
func BenchmarkNVMLCycle(b *testing.B) {
	root := b.TempDir()
	srv := gputest.H100()
	pid := 20000
	for g := 0; g < 8; g++ {
		var procs []nvml.ProcessInfo
		var samples []nvml.ProcessUtilizationSample
		for p := 0; p < 50; p++ {
			pid++
			dir := filepath.Join(root, strconv.Itoa(pid))
			os.MkdirAll(dir, 0o755)
			os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::/user.slice/user-1001.slice/session-1.scope\n"), 0o644)
			os.WriteFile(filepath.Join(dir, "status"), []byte("Name:\tpython\nUid:\t1001\t1001\t1001\t1001\n"), 0o644)
			os.WriteFile(filepath.Join(dir, "stat"), []byte(fmt.Sprintf("%d (python) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 %d 1 1\n", pid, pid)), 0o644)
			os.WriteFile(filepath.Join(dir, "cmdline"), []byte("python\x00train.py\x00--epochs\x0090\x00"), 0o644)
			procs = append(procs, gputest.Proc(pid, 1024))
			samples = append(samples, gputest.Sample(pid, uint64(pid), uint32(p%100)))
		}
		gputest.SetProcs(srv, g, procs, nil)
		gputest.SetUtil(srv, g, gputest.Util{Device: 50, Samples: samples})
	}
	ok := nvml.SUCCESS
	var perOp [2]float64
	for i, util := range []bool{false, true} {
		name := map[bool]string{false: "without-utilization", true: "with-utilization"}[util]
		b.Run(name, func(b *testing.B) {
			src := gpu.New(gputest.NewGuard(b, srv, &ok), nil)
			src.NoUtilization = !util
			files := testutil.NewFiles(b)
			now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			s := New(Config{Files: deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}, Docker: listed{}, GPU: src,
				Proc: proc.New(root), Now: func() time.Time { now = now.Add(30 * time.Second); return now }}, nil)
			ctx := context.Background()
			s.Scan(ctx, true)
			s.Scan(ctx, true) // host processes confirmed
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				if sum := s.Scan(ctx, true); sum.HostProcesses != 400 {
					b.Fatalf("%d host processes", sum.HostProcesses)
				}
			}
			perOp[i] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
	}
	if perOp[0] > 0 && perOp[1] > 0 {
		fmt.Printf("{\"nvml_gpus\":8,\"nvml_processes\":400,\"nvml_cycle_ms\":%.3f,\"nvml_cycle_ms_without_utilization\":%.3f,\"nvml_utilization_ratio\":%.3f}\n",
			perOp[1]/1e6, perOp[0]/1e6, perOp[1]/perOp[0])
	}
}
