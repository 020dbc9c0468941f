// Package gpu is the GPU source: it lists every process on every GPU (and
// on every MIG device) through NVML. NVML comes in as an nvml.Interface, so
// tests use go-nvml's own mock; there are no package-level NVML calls.
//
// One handle serves the life of the daemon. Init is retried on later cycles
// while it fails, and nothing else is ever called after a failed Init: on a
// machine without the driver that would kill the process. Errors that mean
// the handle is dead (GPU lost, driver unloaded, version mismatch,
// uninitialised) shut it down so that the next cycle initialises afresh.
package gpu

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/facts"
)

// The facts this source reports are internal/facts' types: the reconcile
// step reads them without linking NVML.
type (
	Process      = facts.GPUProcess
	Device       = facts.GPUDevice
	Unattributed = facts.Unattributed
	MIG          = facts.MIG
)

// Report is one scan of every GPU.
type Report struct {
	Processes []Process // sorted by GPU, MIG device and PID
	Devices   []Device  // by index
	// Unattributed are the processes accounting mode saw that this
	// source's process lists never did, each reported once.
	Unattributed []Unattributed
}

// unknownMemory is NVML_VALUE_NOT_AVAILABLE for UsedGpuMemory. Values at or
// above maxPlausible (1 PiB) are treated as unknown too.
const (
	unknownMemory = ^uint64(0)
	maxPlausible  = uint64(1) << 50
	// Bounds on counts NVML reports, against a broken driver or library.
	maxDevices    = 1024
	maxMIGDevices = 64
	maxPid        = 1 << 22 // PID_MAX_LIMIT
)

// Symbols read per cycle. They are checked once after each Init, since an
// older driver may lack some of them and go-nvml binds them lazily: calling
// a missing one crashes the process.
var (
	symCompute    = "nvmlDeviceGetComputeRunningProcesses"
	symGraphics   = "nvmlDeviceGetGraphicsRunningProcesses"
	symUtil       = []string{"nvmlDeviceGetUtilizationRates", "nvmlDeviceGetProcessUtilization"}
	symAccounting = []string{"nvmlDeviceGetAccountingMode", "nvmlDeviceGetAccountingPids", "nvmlDeviceGetAccountingStats"}
	symMIG        = []string{"nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId"}
)

// Source reads GPU processes. It is safe for one caller at a time; a call
// that NVML never answers is abandoned at the context's deadline, and later
// calls fail fast until it returns, rather than queue behind it.
type Source struct {
	lib nvml.Interface

	mu       sync.Mutex
	inited   bool
	graphics bool // graphics process list available
	mig      bool // MIG calls available
	util     bool // utilisation calls available
	acct     bool // accounting calls available
	busy     chan struct{}
	// listed are, per GPU UUID, the PIDs its process lists have shown,
	// and reported the accounting entries (pid@start) already reported,
	// both kept only while the GPU's accounting buffer holds them.
	listed   map[string]map[int]bool
	reported map[string]map[string]bool
	// acctOffLogged: the line saying how to turn accounting mode on was
	// logged for this GPU since the last Init.
	acctOffLogged map[string]bool
	// lastSample is, per GPU UUID, the newest process utilisation sample
	// timestamp seen: the next scan asks for the samples after it.
	lastSample map[string]uint64

	// NoUtilization turns the utilisation calls off (the benchmark's
	// baseline).
	NoUtilization bool
	Warnings      []string // symbols found missing at the last Init

	// log gets a warning naming the symbols a driver lacks, once per
	// Init, and one line per GPU whose accounting mode is off.
	log *zap.Logger
}

// New wraps lib, logging to log (nil: nowhere). Init happens on the first
// call.
func New(lib nvml.Interface, log *zap.Logger) *Source {
	if log == nil {
		log = zap.NewNop()
	}
	return &Source{lib: lib, log: log, lastSample: map[string]uint64{}, listed: map[string]map[int]bool{}, reported: map[string]map[string]bool{},
		acctOffLogged: map[string]bool{}}
}

// lifecycle reports whether ret means the handle must be rebuilt.
func lifecycle(ret nvml.Return) bool {
	switch ret {
	case nvml.ERROR_GPU_IS_LOST, nvml.ERROR_DRIVER_NOT_LOADED, nvml.ERROR_LIB_RM_VERSION_MISMATCH, nvml.ERROR_UNINITIALIZED:
		return true
	}
	return false
}

// Error is an NVML failure with the call that returned it.
type Error struct {
	Call string
	Ret  nvml.Return
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %s", e.Call, e.Ret.Error())
	switch e.Ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		msg += " (libnvidia-ml could not be loaded: no NVIDIA driver, or see --nvml-library)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		msg += " (the NVIDIA kernel driver is not loaded)"
	}
	return msg
}

// ErrBusy means an earlier NVML call still has not returned.
var ErrBusy = errors.New("nvml: an earlier call is still blocked; not queuing behind it")

// Processes returns every GPU process, sorted by GPU, MIG device and PID.
func (s *Source) Processes(ctx context.Context) ([]Process, error) {
	r, err := s.Scan(ctx)
	return r.Processes, err
}

// Scan reads every GPU: its processes with their memory and utilisation,
// and the device's own figures. Per GPU it makes at most one process
// utilisation call and one device utilisation call.
func (s *Source) Scan(ctx context.Context) (Report, error) {
	s.mu.Lock()
	if s.busy != nil {
		select {
		case <-s.busy:
			s.busy = nil
		default:
			s.mu.Unlock()
			return Report{}, ErrBusy
		}
	}
	done := make(chan struct{})
	s.busy = done
	s.mu.Unlock()

	var rep Report
	var err error
	go func() {
		defer close(done)
		rep, err = s.scan()
	}()
	select {
	case <-done:
		s.mu.Lock()
		s.busy = nil
		s.mu.Unlock()
		return rep, err
	case <-ctx.Done():
		return Report{}, fmt.Errorf("nvml: no answer before the scan deadline: %w", ctx.Err())
	}
}

// Close shuts NVML down if it was initialised.
func (s *Source) Close() {
	s.mu.Lock()
	busy := s.busy
	s.mu.Unlock()
	if busy != nil {
		select {
		case <-busy:
		default:
			return // a call is stuck inside NVML; do not race it
		}
	}
	if s.inited {
		s.lib.Shutdown()
		s.inited = false
	}
}

func (s *Source) init() error {
	if s.inited {
		return nil
	}
	if ret := s.lib.Init(); ret != nvml.SUCCESS {
		return &Error{"nvmlInit", ret}
	}
	s.inited = true
	s.Warnings = nil
	ext := s.lib.Extensions()
	if err := ext.LookupSymbol(symCompute); err != nil {
		s.lib.Shutdown()
		s.inited = false
		return fmt.Errorf("nvml: the driver lacks %s: %w", symCompute, err)
	}
	s.graphics = ext.LookupSymbol(symGraphics) == nil
	if !s.graphics {
		s.Warnings = append(s.Warnings, symGraphics)
	}
	s.util = true
	for _, sym := range symUtil {
		if ext.LookupSymbol(sym) != nil {
			s.util = false
			s.Warnings = append(s.Warnings, sym)
		}
	}
	s.acct = true
	for _, sym := range symAccounting {
		if ext.LookupSymbol(sym) != nil {
			s.acct = false
		}
	}
	s.acctOffLogged = map[string]bool{}
	s.mig = true
	for _, sym := range symMIG {
		if ext.LookupSymbol(sym) != nil {
			s.mig = false
			s.Warnings = append(s.Warnings, sym)
		}
	}
	if len(s.Warnings) > 0 {
		s.log.Warn("the NVIDIA driver lacks some NVML calls; scanning without them",
			zap.Strings("missing", s.Warnings), zap.Bool("graphics_processes", s.graphics), zap.Bool("mig", s.mig))
	}
	return nil
}

// fail turns an NVML return into an error, shutting the handle down when
// the error means it is dead.
func (s *Source) fail(call string, ret nvml.Return) error {
	if lifecycle(ret) && s.inited {
		s.lib.Shutdown()
		s.inited = false
	}
	return &Error{call, ret}
}

func (s *Source) scan() (Report, error) {
	if err := s.init(); err != nil {
		return Report{}, err
	}
	n, ret := s.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return Report{}, s.fail("nvmlDeviceGetCount", ret)
	}
	if n < 0 || n > maxDevices {
		return Report{}, fmt.Errorf("nvml: absurd device count %d", n)
	}
	var out []Process
	var devs []Device
	var unattributed []Unattributed
	for i := 0; i < n; i++ {
		dev, ret := s.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return Report{}, s.fail(fmt.Sprintf("nvmlDeviceGetHandleByIndex(%d)", i), ret)
		}
		uuid, ret := dev.GetUUID()
		if ret != nvml.SUCCESS {
			return Report{}, s.fail(fmt.Sprintf("nvmlDeviceGetUUID(%d)", i), ret)
		}
		full, err := s.deviceProcs(dev, fmt.Sprintf("GPU %d", i))
		if err != nil {
			return Report{}, err
		}
		d := Device{Index: i, UUID: uuid}
		seen := map[int]bool{}
		if s.mig {
			migProcs, on, err := s.migProcs(dev, i, uuid)
			if err != nil {
				return Report{}, err
			}
			d.MIG = on
			for _, p := range migProcs {
				seen[p.Pid] = true
				out = append(out, p)
			}
		}
		// Per-process utilisation of a full GPU; on a MIG GPU NVML's
		// samples cannot say which instance did the work, so it stays
		// unknown there.
		var util func(pid int) *int
		if !d.MIG {
			if util, err = s.processUtil(dev, uuid, i); err != nil {
				return Report{}, err
			}
		}
		// The parent's lists repeat MIG processes without memory; keep the
		// MIG record, which says where the process runs.
		for _, p := range full {
			if seen[p.pid] {
				continue
			}
			proc := Process{Pid: p.pid, GPUIndex: i, GPUUUID: uuid, MIGIndex: -1, MemoryMiB: p.mem}
			if util != nil {
				proc.SMUtil = util(p.pid)
			}
			out = append(out, proc)
		}
		if err := s.deviceInfo(dev, &d); err != nil {
			return Report{}, err
		}
		listedNow := make([]int, 0, len(full)+len(seen))
		for _, p := range full {
			listedNow = append(listedNow, p.pid)
		}
		for pid := range seen {
			listedNow = append(listedNow, pid)
		}
		un, err := s.accounting(dev, &d, listedNow)
		if err != nil {
			return Report{}, err
		}
		unattributed = append(unattributed, un...)
		devs = append(devs, d)
	}
	sort.Slice(out, func(a, b int) bool {
		x, y := out[a], out[b]
		if x.GPUIndex != y.GPUIndex {
			return x.GPUIndex < y.GPUIndex
		}
		if x.MIGIndex != y.MIGIndex {
			return x.MIGIndex < y.MIGIndex
		}
		return x.Pid < y.Pid
	})
	return Report{Processes: out, Devices: devs, Unattributed: unattributed}, nil
}

func (s *Source) noteListed(uuid string, pid int) {
	m := s.listed[uuid]
	if m == nil {
		m = map[int]bool{}
		s.listed[uuid] = m
	}
	m[pid] = true
}

// maxAccounting bounds the accounting entries read per GPU and scan
// (NVML's buffer holds up to 4,000).
const maxAccounting = 4096

// accounting reads a GPU's accounting mode and, when it is on, the
// processes in its accounting buffer that no process list showed and that
// have finished: the work that ran between two samples. Each is reported
// once. Only an error that means the handle is dead fails the scan.
func (s *Source) accounting(dev nvml.Device, d *Device, listedNow []int) ([]Unattributed, error) {
	if !s.acct {
		return nil, nil
	}
	mode, ret := dev.GetAccountingMode()
	switch {
	case ret == nvml.SUCCESS:
		on := mode == nvml.FEATURE_ENABLED
		d.Accounting = &on
	case lifecycle(ret):
		return nil, s.fail(fmt.Sprintf("nvmlDeviceGetAccountingMode(%d)", d.Index), ret)
	default:
		return nil, nil // unknown
	}
	if !*d.Accounting {
		if !s.acctOffLogged[d.UUID] {
			s.acctOffLogged[d.UUID] = true
			s.log.Info("NVML accounting mode is off on this GPU: processes that start and end between two samples are not seen; turn it on with 'nvidia-smi -pm 1' (persistence mode) and 'nvidia-smi -am 1'",
				zap.Int("gpu", d.Index), zap.String("gpu_uuid", d.UUID))
		}
		delete(s.listed, d.UUID)
		delete(s.reported, d.UUID)
		return nil, nil
	}
	for _, pid := range listedNow {
		s.noteListed(d.UUID, pid)
	}
	pids, ret := dev.GetAccountingPids()
	if ret != nvml.SUCCESS {
		if lifecycle(ret) {
			return nil, s.fail(fmt.Sprintf("nvmlDeviceGetAccountingPids(%d)", d.Index), ret)
		}
		return nil, nil
	}
	if len(pids) > maxAccounting {
		pids = pids[len(pids)-maxAccounting:]
	}
	listed, reported := s.listed[d.UUID], s.reported[d.UUID]
	inBuffer := make(map[int]bool, len(pids))
	keep := map[string]bool{}
	var out []Unattributed
	for _, pid := range pids {
		if pid <= 0 || pid > maxPid {
			continue
		}
		inBuffer[pid] = true
		if listed[pid] {
			continue
		}
		st, ret := dev.GetAccountingStats(uint32(pid))
		if ret != nvml.SUCCESS {
			if lifecycle(ret) {
				return nil, s.fail(fmt.Sprintf("nvmlDeviceGetAccountingStats(%d)", d.Index), ret)
			}
			continue
		}
		if st.IsRunning != 0 {
			continue // still running: a process list will show it
		}
		key := strconv.Itoa(pid) + "@" + strconv.FormatUint(st.StartTime, 10)
		keep[key] = true
		if reported[key] {
			continue
		}
		out = append(out, Unattributed{Pid: pid, GPUIndex: d.Index, GPUUUID: d.UUID, ActiveSeconds: float64(st.Time) / 1000, StartTime: st.StartTime})
	}
	// Forget what the buffer no longer holds: it cannot come back.
	for pid := range listed {
		if !inBuffer[pid] {
			delete(listed, pid)
		}
	}
	s.reported[d.UUID] = keep
	return out, nil
}

func intPtr(v int) *int { return &v }

// processUtil reads the per-process utilisation samples of a full GPU
// since the last scan and returns each PID's value: the highest SM
// utilisation among its samples; 0 for a PID without samples (it was idle;
// NOT_FOUND means no process had any); nil for every PID when NVML cannot
// tell (NOT_SUPPORTED, or the call is missing).
func (s *Source) processUtil(dev nvml.Device, uuid string, i int) (func(int) *int, error) {
	if !s.util || s.NoUtilization {
		return func(int) *int { return nil }, nil
	}
	samples, ret := dev.GetProcessUtilization(s.lastSample[uuid])
	switch {
	case ret == nvml.ERROR_NOT_FOUND:
		return func(int) *int { return intPtr(0) }, nil
	case ret == nvml.ERROR_NOT_SUPPORTED, ret == nvml.ERROR_NO_PERMISSION:
		return func(int) *int { return nil }, nil
	case ret != nvml.SUCCESS:
		if lifecycle(ret) {
			return nil, s.fail(fmt.Sprintf("nvmlDeviceGetProcessUtilization(%d)", i), ret)
		}
		return func(int) *int { return nil }, nil
	}
	peak := map[int]int{}
	for _, smp := range samples {
		if smp.TimeStamp > s.lastSample[uuid] {
			s.lastSample[uuid] = smp.TimeStamp
		}
		v := int(min(smp.SmUtil, 100))
		if old, ok := peak[int(smp.Pid)]; !ok || v > old {
			peak[int(smp.Pid)] = v
		}
	}
	return func(pid int) *int { return intPtr(peak[pid]) }, nil
}

// deviceInfo fills in a GPU's name, memory and whole-device utilisation.
// A figure NVML cannot give stays unknown; only an error that means the
// handle is dead fails the scan.
func (s *Source) deviceInfo(dev nvml.Device, d *Device) error {
	if name, ret := dev.GetName(); ret == nvml.SUCCESS {
		d.Name = name
	} else if lifecycle(ret) {
		return s.fail(fmt.Sprintf("nvmlDeviceGetName(%d)", d.Index), ret)
	}
	if mem, ret := dev.GetMemoryInfo(); ret == nvml.SUCCESS {
		d.MemoryTotalMiB, d.MemoryUsedMiB = memMiB(mem.Total), memMiB(mem.Used)
	} else if lifecycle(ret) {
		return s.fail(fmt.Sprintf("nvmlDeviceGetMemoryInfo(%d)", d.Index), ret)
	}
	if s.util && !s.NoUtilization {
		if u, ret := dev.GetUtilizationRates(); ret == nvml.SUCCESS && u.Gpu <= 100 {
			d.Util = intPtr(int(u.Gpu))
		} else if lifecycle(ret) {
			return s.fail(fmt.Sprintf("nvmlDeviceGetUtilizationRates(%d)", d.Index), ret)
		}
	}
	return nil
}

type rawProc struct {
	pid int
	mem *int64
}

// deviceProcs reads the compute and graphics lists of one device and
// de-duplicates them by PID.
func (s *Source) deviceProcs(dev nvml.Device, what string) ([]rawProc, error) {
	compute, ret := dev.GetComputeRunningProcesses()
	if ret != nvml.SUCCESS && ret != nvml.ERROR_NOT_SUPPORTED {
		return nil, s.fail("nvmlDeviceGetComputeRunningProcesses("+what+")", ret)
	}
	var graphics []nvml.ProcessInfo
	if s.graphics {
		graphics, ret = dev.GetGraphicsRunningProcesses()
		if ret != nvml.SUCCESS && ret != nvml.ERROR_NOT_SUPPORTED {
			return nil, s.fail("nvmlDeviceGetGraphicsRunningProcesses("+what+")", ret)
		}
	}
	var out []rawProc
	idx := map[int]int{}
	for _, p := range append(compute, graphics...) {
		pid := int(p.Pid)
		if pid <= 0 || pid > maxPid {
			continue // not a PID this kernel can have
		}
		mem := memMiB(p.UsedGpuMemory)
		if j, ok := idx[pid]; ok {
			if out[j].mem == nil {
				out[j].mem = mem
			}
			continue
		}
		idx[pid] = len(out)
		out = append(out, rawProc{pid, mem})
	}
	return out, nil
}

func memMiB(b uint64) *int64 {
	if b == unknownMemory || b >= maxPlausible {
		return nil
	}
	v := int64(b / (1024 * 1024))
	return &v
}

// migProcs lists the processes on GPU gpuIndex's MIG devices, and says
// whether MIG mode is on.
func (s *Source) migProcs(dev nvml.Device, gpuIndex int, gpuUUID string) ([]Process, bool, error) {
	mode, _, ret := dev.GetMigMode()
	if ret == nvml.ERROR_NOT_SUPPORTED || (ret == nvml.SUCCESS && mode != nvml.DEVICE_MIG_ENABLE) {
		return nil, false, nil
	}
	if ret != nvml.SUCCESS {
		return nil, false, s.fail(fmt.Sprintf("nvmlDeviceGetMigMode(%d)", gpuIndex), ret)
	}
	max, ret := dev.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil, true, s.fail(fmt.Sprintf("nvmlDeviceGetMaxMigDeviceCount(%d)", gpuIndex), ret)
	}
	if max < 0 || max > maxMIGDevices {
		return nil, true, fmt.Errorf("nvml: absurd MIG device count %d on GPU %d", max, gpuIndex)
	}
	var out []Process
	for m := 0; m < max; m++ {
		mdev, ret := dev.GetMigDeviceHandleByIndex(m)
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue // no MIG device in this slot
		}
		if ret != nvml.SUCCESS {
			return nil, true, s.fail(fmt.Sprintf("nvmlDeviceGetMigDeviceHandleByIndex(%d,%d)", gpuIndex, m), ret)
		}
		what := fmt.Sprintf("GPU %d MIG %d", gpuIndex, m)
		muuid, ret := mdev.GetUUID()
		if ret != nvml.SUCCESS {
			return nil, true, s.fail("nvmlDeviceGetUUID("+what+")", ret)
		}
		gi, ret := mdev.GetGpuInstanceId()
		if ret != nvml.SUCCESS {
			return nil, true, s.fail("nvmlDeviceGetGpuInstanceId("+what+")", ret)
		}
		ci, ret := mdev.GetComputeInstanceId()
		if ret != nvml.SUCCESS {
			return nil, true, s.fail("nvmlDeviceGetComputeInstanceId("+what+")", ret)
		}
		procs, err := s.deviceProcs(mdev, what)
		if err != nil {
			return nil, true, err
		}
		for _, p := range procs {
			out = append(out, Process{
				Pid: p.pid, GPUIndex: gpuIndex, GPUUUID: gpuUUID, MIGIndex: m, MemoryMiB: p.mem,
				MIG: &MIG{UUID: muuid, GPUInstanceID: gi, ComputeInstanceID: ci},
			})
		}
	}
	return out, true, nil
}
