package gpu

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/ds01/ds01-detectord/internal/source/gpu/gputest"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

func mem(v int64) *int64 { return &v }

type got struct {
	Pid, GPU, MIGIndex int
	MIG                string
	Mem                *int64
}

func summarize(ps []Process) []got {
	var out []got
	for _, p := range ps {
		g := got{Pid: p.Pid, GPU: p.GPUIndex, MIGIndex: p.MIGIndex, Mem: p.MemoryMiB}
		if p.MIG != nil {
			g.MIG = p.MIG.UUID
		}
		out = append(out, g)
	}
	return out
}

func TestProcessesFullAndMIG(t *testing.T) {
	s := gputest.H100()
	// GPU 0: a PID in both lists, and one with unknown memory.
	gputest.SetProcs(s, 0,
		[]nvml.ProcessInfo{gputest.Proc(100, 1024), gputest.Proc(101, gputest.Unknown)},
		[]nvml.ProcessInfo{gputest.Proc(100, 1024), gputest.Proc(102, 10)})
	// GPU 3: MIG on. The parent lists repeat the MIG processes without memory.
	gputest.SetProcs(s, 3, []nvml.ProcessInfo{gputest.Proc(300, gputest.Unknown), gputest.Proc(301, gputest.Unknown)}, nil)
	gputest.SetMIG(s, 3,
		gputest.MIG{UUID: gputest.MIGUUID(3, 0), GI: 1, CI: 0, Compute: []nvml.ProcessInfo{gputest.Proc(300, 5000)}},
		gputest.MIG{UUID: gputest.MIGUUID(3, 1), GI: 2, CI: 0, Compute: []nvml.ProcessInfo{gputest.Proc(301, gputest.Unknown)}, Graphics: []nvml.ProcessInfo{gputest.Proc(301, gputest.Unknown)}},
	)
	// GPU 7: absurd memory value.
	gputest.SetProcs(s, 7, []nvml.ProcessInfo{{Pid: 700, UsedGpuMemory: 1 << 62}, {Pid: 0, UsedGpuMemory: 5}}, nil)

	src := New(s, nil)
	ps, err := src.Processes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []got{
		{100, 0, -1, "", mem(1024)},
		{101, 0, -1, "", nil},
		{102, 0, -1, "", mem(10)},
		{300, 3, 0, gputest.MIGUUID(3, 0), mem(5000)},
		{301, 3, 1, gputest.MIGUUID(3, 1), nil},
		{700, 7, -1, "", nil},
	}
	if g := summarize(ps); !reflect.DeepEqual(g, want) {
		t.Errorf("got  %+v\nwant %+v", g, want)
	}
	uuid3, _ := s.Devices[3].GetUUID()
	if ps[3].GPUUUID != uuid3 || !reflect.DeepEqual(ps[3].MIG, &MIG{UUID: gputest.MIGUUID(3, 0), GPUInstanceID: 1, ComputeInstanceID: 0}) {
		t.Errorf("MIG process identity: %+v %+v", ps[3], ps[3].MIG)
	}
}

// guarded makes every call after Init fail the test while Init has not
// succeeded: on a machine without the driver such a call kills the process.
func guarded(t *testing.T, initRet *nvml.Return) *gputest.Guard {
	return gputest.NewGuard(t, gputest.H100(), initRet)
}

func TestInitFailureNeverCallsFurther(t *testing.T) {
	ret := nvml.ERROR_LIBRARY_NOT_FOUND
	g := guarded(t, &ret)
	src := New(g, nil)
	for i := 0; i < 3; i++ {
		_, err := src.Processes(context.Background())
		var ne *Error
		if !errors.As(err, &ne) || ne.Ret != nvml.ERROR_LIBRARY_NOT_FOUND || !strings.Contains(err.Error(), "libnvidia-ml") {
			t.Fatalf("err = %v", err)
		}
	}
	if g.Inits != 3 {
		t.Errorf("Init tried %d times, want once per cycle (3)", g.Inits)
	}
	// The driver appears: the next cycle picks it up.
	ret = nvml.SUCCESS
	if _, err := src.Processes(context.Background()); err != nil {
		t.Fatalf("after the driver appeared: %v", err)
	}
}

func TestLifecycleErrorThenRecovery(t *testing.T) {
	for _, bad := range []nvml.Return{nvml.ERROR_GPU_IS_LOST, nvml.ERROR_DRIVER_NOT_LOADED, nvml.ERROR_LIB_RM_VERSION_MISMATCH, nvml.ERROR_UNINITIALIZED} {
		ok := nvml.SUCCESS
		g := guarded(t, &ok)
		src := New(g, nil)
		g.FailCount = bad
		if _, err := src.Processes(context.Background()); err == nil {
			t.Fatalf("%v: no error", bad)
		}
		if g.Shutdowns != 1 || g.Initialised {
			t.Fatalf("%v: shutdowns %d, still initialised %v", bad, g.Shutdowns, g.Initialised)
		}
		g.FailCount = nvml.SUCCESS
		if _, err := src.Processes(context.Background()); err != nil {
			t.Fatalf("%v: no recovery: %v", bad, err)
		}
		if g.Inits != 2 {
			t.Errorf("%v: %d inits, want 2", bad, g.Inits)
		}
	}
	// A non-lifecycle error fails the cycle but keeps the handle.
	ok := nvml.SUCCESS
	g := guarded(t, &ok)
	src := New(g, nil)
	g.FailCount = nvml.ERROR_UNKNOWN
	if _, err := src.Processes(context.Background()); err == nil || g.Shutdowns != 0 {
		t.Fatalf("unknown error: err %v, shutdowns %d", err, g.Shutdowns)
	}
}

func TestBlockedCallIsAbandoned(t *testing.T) {
	s := gputest.H100()
	release := make(chan struct{})
	var calls atomic.Int32
	d := gputest.Device(s, 2)
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		if calls.Add(1) == 1 {
			<-release // the first call hangs until released
		}
		return []nvml.ProcessInfo{gputest.Proc(42, 1)}, nvml.SUCCESS
	}
	src := New(s, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := src.Processes(ctx); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked call: err = %v", err)
	}
	// The next cycle does not queue behind the stuck call.
	if _, err := src.Processes(context.Background()); !errors.Is(err, ErrBusy) {
		t.Fatalf("second call: err = %v, want ErrBusy", err)
	}
	close(release)
	var ps []Process
	var err error
	testutil.Poll(time.Second, func() bool { // the stuck call returns in its own time
		ps, err = src.Processes(context.Background())
		return !errors.Is(err, ErrBusy)
	})
	if err != nil || len(ps) != 1 || ps[0].Pid != 42 {
		t.Fatalf("after release: %v %+v", err, ps)
	}
}

func TestMissingSymbols(t *testing.T) {
	s := gputest.H100()
	gputest.SetProcs(s, 0, []nvml.ProcessInfo{gputest.Proc(1, 1)}, nil)
	for i := range s.Devices {
		gputest.Device(s, i).GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
			t.Fatal("graphics list called although its symbol is missing")
			return nil, nvml.SUCCESS
		}
		gputest.Device(s, i).GetMigModeFunc = func() (int, int, nvml.Return) {
			t.Fatal("MIG mode called although its symbol is missing")
			return 0, 0, nvml.SUCCESS
		}
	}
	s.LookupSymbolFunc = func(sym string) error {
		if sym == symGraphics || sym == "nvmlDeviceGetMigDeviceHandleByIndex" {
			return errors.New("undefined symbol: " + sym)
		}
		return nil
	}
	src := New(s, nil)
	ps, err := src.Processes(context.Background())
	if err != nil || len(ps) != 1 {
		t.Fatalf("%v %+v", err, ps)
	}
	if !reflect.DeepEqual(src.Warnings, []string{symGraphics, "nvmlDeviceGetMigDeviceHandleByIndex"}) {
		t.Errorf("warnings %v", src.Warnings)
	}

	// Without the compute list there is nothing to read: a clear error.
	s.LookupSymbolFunc = func(sym string) error { return errors.New("undefined symbol: " + sym) }
	src = New(s, nil)
	if _, err := src.Processes(context.Background()); err == nil || !strings.Contains(err.Error(), symCompute) {
		t.Fatalf("err = %v", err)
	}
}

func TestAbsurdValues(t *testing.T) {
	s := gputest.H100()
	gputest.SetProcs(s, 0, []nvml.ProcessInfo{{Pid: 4294967295, UsedGpuMemory: 1}, {Pid: 5, UsedGpuMemory: 1 << 55}}, nil)
	ps, err := New(s, nil).Processes(context.Background())
	if err != nil || len(ps) != 1 || ps[0].Pid != 5 || ps[0].MemoryMiB != nil {
		t.Fatalf("absurd pid and memory: %v %+v", err, ps)
	}
	s.DeviceGetCountFunc = func() (int, nvml.Return) { return 1 << 20, nvml.SUCCESS }
	if _, err := New(s, nil).Processes(context.Background()); err == nil || !strings.Contains(err.Error(), "absurd device count") {
		t.Fatalf("absurd count: %v", err)
	}
	s = gputest.H100()
	gputest.SetMIG(s, 1)
	gputest.Device(s, 1).GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return -3, nvml.SUCCESS }
	if _, err := New(s, nil).Processes(context.Background()); err == nil || !strings.Contains(err.Error(), "absurd MIG") {
		t.Fatalf("absurd MIG count: %v", err)
	}
}

// Utilisation semantics: a burst counts (the highest sample), a PID with no
// sample was idle (0), NOT_FOUND means the whole GPU was idle, NOT_SUPPORTED
// and MIG mean unknown (nil), and each scan asks only for the samples after
// the last one it saw, with one call of each kind per GPU.
func TestProcessUtilization(t *testing.T) {
	srv := gputest.H100()
	ok := nvml.SUCCESS
	src := New(gputest.NewGuard(t, srv, &ok), nil)
	gputest.SetProcs(srv, 0, []nvml.ProcessInfo{gputest.Proc(10, 100), gputest.Proc(11, 100)}, nil)
	gputest.SetProcs(srv, 1, []nvml.ProcessInfo{gputest.Proc(20, 100)}, nil)
	gputest.SetProcs(srv, 2, []nvml.ProcessInfo{gputest.Proc(30, 100)}, nil)
	gputest.SetMIG(srv, 3, gputest.MIG{UUID: gputest.MIGUUID(3, 0), GI: 1, Compute: []nvml.ProcessInfo{gputest.Proc(40, 100)}})
	// GPU 0: 10 bursts to 90 among lower samples; 11 has no sample.
	gputest.SetUtil(srv, 0, gputest.Util{Device: 55, Samples: []nvml.ProcessUtilizationSample{
		gputest.Sample(10, 1000, 20), gputest.Sample(10, 2000, 90), gputest.Sample(10, 3000, 5)}})
	gputest.SetUtil(srv, 1, gputest.Util{Ret: nvml.ERROR_NOT_FOUND})
	gputest.SetUtil(srv, 2, gputest.Util{Ret: nvml.ERROR_NOT_SUPPORTED})
	var calls [8]int
	for i := 0; i < 8; i++ {
		d := gputest.Device(srv, i)
		f, g := d.GetProcessUtilizationFunc, d.GetUtilizationRatesFunc
		i := i
		d.GetProcessUtilizationFunc = func(since uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
			calls[i]++
			return f(since)
		}
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { calls[i]++; return g() }
	}
	rep, err := src.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	util := map[int]string{}
	for _, p := range rep.Processes {
		if p.SMUtil == nil {
			util[p.Pid] = "unknown"
		} else {
			util[p.Pid] = strconv.Itoa(*p.SMUtil)
		}
	}
	want := map[int]string{10: "90", 11: "0", 20: "0", 30: "unknown", 40: "unknown"}
	if !reflect.DeepEqual(util, want) {
		t.Errorf("utilisation %v, want %v", util, want)
	}
	if d := rep.Devices[0]; d.Util == nil || *d.Util != 55 || d.Name == "" || d.MemoryTotalMiB == nil || d.MIG {
		t.Errorf("device 0: %+v", d)
	}
	if !rep.Devices[3].MIG {
		t.Error("MIG mode not reported")
	}
	for i, n := range calls {
		if n > 2 {
			t.Errorf("GPU %d: %d utilisation calls in one scan", i, n)
		}
	}
	// The next scan asks from timestamp 3000: the old samples are not
	// counted again, so 10 had none and was idle.
	rep, _ = src.Scan(context.Background())
	for _, p := range rep.Processes {
		if p.Pid == 10 && (p.SMUtil == nil || *p.SMUtil != 0) {
			t.Errorf("old samples counted again: %v", *p.SMUtil)
		}
	}
}
