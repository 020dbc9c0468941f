package cycle

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/gpu/gputest"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// Accounting mode on go-nvml's mock: GPU 0 has it on, and its buffer
// holds a PID that no process list ever showed, finished after 800 ms of
// activity (and gone from /proc): 0.8 s of unattributed_seconds on GPU 0,
// once. GPU 1 has it off (false, and one journal line saying how to turn
// it on); the others cannot tell (null).
func TestAccountingModeOnTheMock(t *testing.T) {
	srv := gputest.H100()
	const ghost = 4000000 // no such PID in /proc (pid_max is lower)
	gputest.SetAccounting(srv, 0, map[int]nvml.AccountingStats{ghost: {Time: 800, StartTime: uint64(time.Now().UnixMicro()), IsRunning: 0}}, nvml.SUCCESS)
	gputest.SetAccounting(srv, 1, nil, nvml.SUCCESS)
	ok := nvml.SUCCESS
	files := testutil.NewFiles(t)
	log, lines := testutil.Logger()
	src := gpu.New(gputest.NewGuard(t, srv, &ok), log)
	s := New(Config{Files: deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}, Docker: listed{}, GPU: src, Proc: proc.New("/proc")}, log)
	ctx := context.Background()
	for i := 0; i < 3; i++ { // reported once, not at every sample
		s.Sampler().Sample(ctx)
		s.Scan(ctx, true)
	}
	st := files.State()
	uuid0, _ := srv.Devices[0].GetUUID()
	uuid1, _ := srv.Devices[1].GetUUID()
	uuid2, _ := srv.Devices[2].GetUUID()
	g0, g1, g2 := st.GPUs[uuid0], st.GPUs[uuid1], st.GPUs[uuid2]
	if g0.AccountingMode == nil || !*g0.AccountingMode || g0.UnattributedSeconds != 0.8 {
		t.Errorf("GPU 0: accounting %v, unattributed %v s, want on and 0.8", g0.AccountingMode, g0.UnattributedSeconds)
	}
	if g1.AccountingMode == nil || *g1.AccountingMode || g1.UnattributedSeconds != 0 {
		t.Errorf("GPU 1: accounting %v, unattributed %v", g1.AccountingMode, g1.UnattributedSeconds)
	}
	if g2.AccountingMode != nil {
		t.Errorf("GPU 2: accounting %v, want unknown", *g2.AccountingMode)
	}
	if n := strings.Count(lines(), "nvidia-smi -am 1"); n != 1 {
		t.Errorf("%d lines on turning accounting mode on, want 1:\n%s", n, lines())
	}
}
