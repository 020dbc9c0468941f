package facts

// GPUProcess is one process seen on one GPU or MIG device.
type GPUProcess struct {
	Pid       int
	GPUIndex  int
	GPUUUID   string // the physical GPU
	MIG       *MIG   // nil on a full GPU
	MIGIndex  int    // MIG device index on its GPU, -1 on a full GPU
	MemoryMiB *int64 // nil when NVML cannot tell
	// SMUtil is the highest SM utilisation (percent) among the process's
	// samples since the last scan: 0 when NVML has no sample for it (it was
	// idle), nil when NVML cannot tell (NOT_SUPPORTED, MIG devices).
	SMUtil *int
}

// GPUDevice is one physical GPU.
type GPUDevice struct {
	Index          int
	UUID           string
	Name           string
	MemoryTotalMiB *int64
	MemoryUsedMiB  *int64
	Util           *int // whole-device utilisation (percent), nil when unknown
	MIG            bool // MIG mode is on
	// Accounting is NVML accounting mode (nvmlDeviceGetAccountingMode):
	// nil when unknown (not supported, or the driver lacks the call).
	Accounting *bool
}

// Unattributed is a process NVML's accounting buffer holds that never
// appeared in a process list this source read: it ran, and finished,
// between two samples. ActiveSeconds is the time its compute context was
// active.
type Unattributed struct {
	Pid           int
	GPUIndex      int
	GPUUUID       string
	ActiveSeconds float64
	StartTime     uint64 // NVML's, µs since the epoch: with Pid, its identity
}

// MIG identifies the MIG device a process runs on.
type MIG struct {
	UUID              string
	GPUInstanceID     int
	ComputeInstanceID int
}
