package statefile

import "github.com/ds01/ds01-detectord/pkg/inventory"

// Equal reports whether two containers would be written the same. It is
// a plain field-by-field comparison, much cheaper than reflect.DeepEqual:
// the state file's encoder uses it every cycle to reuse the encoding of
// each container that did not change. A test checks that it looks at
// every field. Both are pointers: a container is several hundred bytes,
// and the encoder compares thousands each cycle.
func Equal(c, o *inventory.Container) bool {
	if c.ID != o.ID || c.Name != o.Name || c.Origin != o.Origin || c.User != o.User || c.HasGPU != o.HasGPU ||
		c.Status != o.Status || c.Image != o.Image || !c.DetectedAt.Equal(o.DetectedAt.Time) ||
		c.FullID != o.FullID || c.UserSource != o.UserSource || c.UserConflict != o.UserConflict || c.Pid != o.Pid ||
		c.GPUWithoutAccess != o.GPUWithoutAccess || c.GPUIdle != o.GPUIdle ||
		c.GPUAllocatedSeconds != o.GPUAllocatedSeconds || c.GPUHeldSeconds != o.GPUHeldSeconds || c.GPUBusySeconds != o.GPUBusySeconds {
		return false
	}
	if !eqStrings(c.GPUDevices, o.GPUDevices) || !eqStrings(c.GPUAccess, o.GPUAccess) ||
		!eqTime(c.CreatedAt, o.CreatedAt) || !eqTime(c.StartedAt, o.StartedAt) || !eqTime(c.FinishedAt, o.FinishedAt) ||
		!eqTime(c.GPUIdleSince, o.GPUIdleSince) || !eqPtr(c.ExitCode, o.ExitCode) || !eqPtr(c.GPUMemoryMB, o.GPUMemoryMB) ||
		!eqPtr(c.GPUUtilizationPercent, o.GPUUtilizationPercent) {
		return false
	}
	if !eqPtr(c.CPUPercent, o.CPUPercent) || !eqPtr(c.CPUUsageSeconds, o.CPUUsageSeconds) || !eqPtr(c.MemoryBytes, o.MemoryBytes) ||
		!eqPtr(c.NetRxBytes, o.NetRxBytes) || !eqPtr(c.NetTxBytes, o.NetTxBytes) || !eqPtr(c.NetBytesPerInterval, o.NetBytesPerInterval) ||
		!eqPtr(c.BlkioReadBytes, o.BlkioReadBytes) || !eqPtr(c.BlkioWriteBytes, o.BlkioWriteBytes) ||
		!eqTime(c.IdleSince, o.IdleSince) || !eqTime(c.IdleDeadline, o.IdleDeadline) || c.IdleScans != o.IdleScans ||
		c.ActivityAt != o.ActivityAt || !equalSignals(c.IdleSignals, o.IdleSignals) || !equalPolicy(c.IdlePolicy, o.IdlePolicy) {
		return false
	}
	if (c.OwnerSeconds == nil) != (o.OwnerSeconds == nil) || len(c.OwnerSeconds) != len(o.OwnerSeconds) {
		return false
	}
	for i := range c.OwnerSeconds {
		if c.OwnerSeconds[i] != o.OwnerSeconds[i] {
			return false
		}
	}
	if (c.UserSignals == nil) != (o.UserSignals == nil) || len(c.UserSignals) != len(o.UserSignals) {
		return false
	}
	for i := range c.UserSignals {
		if c.UserSignals[i] != o.UserSignals[i] {
			return false
		}
	}
	if (c.GPUProcesses == nil) != (o.GPUProcesses == nil) || len(c.GPUProcesses) != len(o.GPUProcesses) {
		return false
	}
	for i := range c.GPUProcesses {
		if !equalProcess(c.GPUProcesses[i], o.GPUProcesses[i]) {
			return false
		}
	}
	return true
}

// equalProcess reports whether two GPU processes would be written the same.
func equalProcess(p, o inventory.GPUProcess) bool {
	return p.Pid == o.Pid && p.GPUIndex == o.GPUIndex && p.GPUUUID == o.GPUUUID && eqPtr(p.MIG, o.MIG) &&
		eqPtr(p.GPUMemoryMB, o.GPUMemoryMB) && eqPtr(p.SMUtilPercent, o.SMUtilPercent) &&
		p.OutsideGPUDevices == o.OutsideGPUDevices && p.Attribution == o.Attribution && p.Runtime == o.Runtime &&
		p.ContainerID == o.ContainerID && p.User == o.User && eqPtr(p.UID, o.UID) && p.Cmdline == o.Cmdline && p.Error == o.Error
}

func eqStrings(a, b []string) bool {
	if (a == nil) != (b == nil) || len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func eqPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func eqTime(a, b *inventory.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(b.Time)
}

func equalSignals(s, o *inventory.IdleSignals) bool {
	if s == nil || o == nil {
		return s == o
	}
	return equalSignal(s.GPU, o.GPU) && equalSignal(&s.CPU, &o.CPU) && equalSignal(&s.Network, &o.Network)
}

func equalSignal(s, o *inventory.IdleSignal) bool {
	if s == nil || o == nil {
		return s == o
	}
	return eqPtr(s.Value, o.Value) && s.Threshold == o.Threshold && s.Idle == o.Idle
}

func equalPolicy(p, o *inventory.IdlePolicy) bool {
	if p == nil || o == nil {
		return p == o
	}
	return p.Source == o.Source && p.Group == o.Group && p.GroupSource == o.GroupSource && eqPtr(p.IdleTimeoutH, o.IdleTimeoutH) &&
		p.TimeoutSource == o.TimeoutSource && p.IdleDetectionWindow == o.IdleDetectionWindow && p.GracePeriodM == o.GracePeriodM
}
