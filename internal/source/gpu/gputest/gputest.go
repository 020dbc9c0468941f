// Package gputest builds NVML mocks for tests from go-nvml's own
// pkg/nvml/mock servers (dgxh100 and friends), with process lists and MIG
// devices filled in.
package gputest

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// MiB is one mebibyte in NVML's byte units.
const MiB = 1 << 20

// Unknown is NVML's "not available" memory value.
const Unknown = ^uint64(0)

// MIG describes one MIG device to add to a GPU.
type MIG struct {
	UUID     string
	GI, CI   int
	Compute  []nvml.ProcessInfo
	Graphics []nvml.ProcessInfo
}

// H100 returns an 8-GPU DGX H100 mock whose GPUs have no processes and
// report no utilisation samples (NOT_FOUND: idle) and 0 % device use.
func H100() *server.Server {
	s := dgxh100.New()
	for i := range s.Devices {
		SetProcs(s, i, nil, nil)
		SetUtil(s, i, Util{Ret: nvml.ERROR_NOT_FOUND})
		SetAccounting(s, i, nil, nvml.ERROR_NOT_SUPPORTED)
	}
	return s
}

// SetAccounting makes GPU i report accounting mode: ret NOT_SUPPORTED
// (unknown), else on when stats is not nil, with stats as its accounting
// buffer (by PID), else off.
func SetAccounting(s *server.Server, i int, stats map[int]nvml.AccountingStats, ret nvml.Return) {
	d := Device(s, i)
	d.GetAccountingModeFunc = func() (nvml.EnableState, nvml.Return) {
		if ret != nvml.SUCCESS {
			return 0, ret
		}
		if stats == nil {
			return nvml.FEATURE_DISABLED, nvml.SUCCESS
		}
		return nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	d.GetAccountingPidsFunc = func() ([]int, nvml.Return) {
		var pids []int
		for pid := range stats {
			pids = append(pids, pid)
		}
		return pids, nvml.SUCCESS
	}
	d.GetAccountingStatsFunc = func(pid uint32) (nvml.AccountingStats, nvml.Return) {
		st, ok := stats[int(pid)]
		if !ok {
			return nvml.AccountingStats{}, nvml.ERROR_NOT_FOUND
		}
		return st, nvml.SUCCESS
	}
}

// Util is what GPU i reports for one scan's utilisation calls.
type Util struct {
	Device  uint32                          // nvmlDeviceGetUtilizationRates' gpu %
	Samples []nvml.ProcessUtilizationSample // nvmlDeviceGetProcessUtilization
	Ret     nvml.Return                     // its return (SUCCESS when zero)
}

// SetUtil makes GPU i report u from now on. Samples older than the
// timestamp the caller asks from are left out, as NVML does; a call with
// none left returns NOT_FOUND.
func SetUtil(s *server.Server, i int, u Util) {
	d := Device(s, i)
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		return nvml.Utilization{Gpu: u.Device}, nvml.SUCCESS
	}
	d.GetProcessUtilizationFunc = func(since uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
		if u.Ret != nvml.SUCCESS {
			return nil, u.Ret
		}
		var out []nvml.ProcessUtilizationSample
		for _, smp := range u.Samples {
			if smp.TimeStamp > since {
				out = append(out, smp)
			}
		}
		if len(out) == 0 {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return out, nvml.SUCCESS
	}
}

// Sample is one utilisation sample of pid at timestamp ts (µs).
func Sample(pid int, ts uint64, sm uint32) nvml.ProcessUtilizationSample {
	return nvml.ProcessUtilizationSample{Pid: uint32(pid), TimeStamp: ts, SmUtil: sm}
}

// Device returns GPU i of s.
func Device(s *server.Server, i int) *server.Device { return s.Devices[i].(*server.Device) }

// SetProcs sets the compute and graphics lists of GPU i.
func SetProcs(s *server.Server, i int, compute, graphics []nvml.ProcessInfo) {
	d := Device(s, i)
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return compute, nvml.SUCCESS }
	d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return graphics, nvml.SUCCESS }
}

// SetMIG turns MIG mode on for GPU i and gives it the MIG devices migs, at
// indexes 0..len-1 of a 7-slot table.
func SetMIG(s *server.Server, i int, migs ...MIG) {
	d := Device(s, i)
	d.MigMode = nvml.DEVICE_MIG_ENABLE
	handles := make([]nvml.Device, len(migs))
	for j, m := range migs {
		m := m
		handles[j] = &mock.Device{
			GetUUIDFunc:                     func() (string, nvml.Return) { return m.UUID, nvml.SUCCESS },
			GetGpuInstanceIdFunc:            func() (int, nvml.Return) { return m.GI, nvml.SUCCESS },
			GetComputeInstanceIdFunc:        func() (int, nvml.Return) { return m.CI, nvml.SUCCESS },
			GetComputeRunningProcessesFunc:  func() ([]nvml.ProcessInfo, nvml.Return) { return m.Compute, nvml.SUCCESS },
			GetGraphicsRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) { return m.Graphics, nvml.SUCCESS },
		}
	}
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	d.GetMigDeviceHandleByIndexFunc = func(n int) (nvml.Device, nvml.Return) {
		if n < len(handles) {
			return handles[n], nvml.SUCCESS
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
}

// Proc is a process list entry.
func Proc(pid int, mib uint64) nvml.ProcessInfo {
	mem := mib * MiB
	if mib == Unknown {
		mem = Unknown
	}
	return nvml.ProcessInfo{Pid: uint32(pid), UsedGpuMemory: mem}
}

// MIGUUID makes a MIG UUID for tests.
func MIGUUID(gpu, idx int) string {
	return fmt.Sprintf("MIG-%08d-0000-4000-8000-%012d", gpu, idx)
}
