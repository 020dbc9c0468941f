package detector

import (
	"context"
	"path"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/classify"
	"github.com/ds01/ds01-detectord/internal/gpu"
	"github.com/ds01/ds01-detectord/internal/procfs"
	"github.com/ds01/ds01-detectord/internal/redact"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// GPUs is the GPU source as the detector sees it.
type GPUs interface {
	Processes(ctx context.Context) ([]gpu.Process, error)
}

// DefaultExcluded are the system GPU processes the reference leaves out
// (REFERENCE §1.8), matched on the basename of argv[0].
var DefaultExcluded = []string{"nvidia-persistenced", "nv-hostengine", "dcgm", "dcgmi", "nvidia-smi", "Xorg", "X"}

// attribute sorts the GPU processes NVML reported into containers, other
// runtimes and host processes. It reads /proc only for those PIDs.
func (d *Detector) attribute(procs []gpu.Process, containers map[string]inventory.Container) (map[string]inventory.HostProcess, []inventory.GPUProcess) {
	host := map[string]inventory.HostProcess{}
	other := []inventory.GPUProcess{}
	fs := d.cfg.Proc
	for _, p := range procs {
		gp := inventory.GPUProcess{Pid: p.Pid, GPUIndex: p.GPUIndex, GPUUUID: p.GPUUUID, MIG: p.MIG, GPUMemoryMB: p.MemoryMiB}
		ref, err := fs.Cgroup(p.Pid)
		if err != nil {
			gp.Runtime, gp.Error = procfs.RuntimeUnknown, "cannot read /proc/"+strconv.Itoa(p.Pid)+": "+errText(err)
			other = append(other, gp)
			continue
		}
		if ref.ID != "" {
			if c, ok := containers[shortID(ref.ID)]; ok {
				gp.OutsideGPUDevices = outsideDevices(p, c.GPUDevices)
				c.GPUProcesses = append(c.GPUProcesses, gp)
				containers[c.ID] = c
				continue
			}
			gp.Runtime, gp.ContainerID = ref.Runtime, ref.ID
		}
		argv, _ := fs.Argv(p.Pid)
		if !d.cfg.KeepSecrets {
			argv = redact.Args(argv)
		}
		cmdline := procfs.JoinCmdline(argv)
		uid, uerr := fs.UID(p.Pid)
		user := classify.Unknown
		if uerr == nil {
			user = d.userName(uid)
		}
		if gp.Runtime != "" { // a container Docker does not know
			gp.Cmdline, gp.User = cmdline, user
			if uerr == nil {
				gp.UID = &uid
			}
			other = append(other, gp)
			continue
		}
		if d.excluded(cmdline) {
			continue
		}
		start, serr := fs.StartTime(p.Pid)
		if serr != nil {
			continue // gone between the two reads
		}
		key := strconv.Itoa(p.Pid)
		if hp, ok := host[key]; ok { // same process on another GPU
			hp.GPUMemoryMB = addMem(hp.GPUMemoryMB, p.MemoryMiB)
			host[key] = hp
			continue
		}
		host[key] = inventory.HostProcess{
			Pid: p.Pid, User: user, Cmdline: cmdline, GPUMemoryMB: p.MemoryMiB, GPUUUID: p.GPUUUID,
			UID: uid, StartTime: start, GPUIndex: p.GPUIndex, MIG: p.MIG,
		}
	}
	for k, c := range containers {
		if len(c.GPUProcesses) == 0 {
			continue
		}
		var total *int64
		for _, gp := range c.GPUProcesses {
			total = addMem(total, gp.GPUMemoryMB)
		}
		if total == nil {
			zero := int64(0)
			total = &zero
		}
		c.GPUMemoryMB = total
		c.GPUWithoutAccess = !c.HasGPU
		containers[k] = c
	}
	return host, other
}

func errText(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

func addMem(a, b *int64) *int64 {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	v := *a + *b
	return &v
}

func (d *Detector) userName(uid uint32) string {
	if d.cfg.Users != nil {
		if n, ok := d.cfg.Users(uid); ok {
			return n
		}
	}
	return strconv.FormatUint(uint64(uid), 10)
}

func (d *Detector) excluded(cmdline string) bool {
	argv0, _, _ := strings.Cut(cmdline, " ")
	name := path.Base(argv0)
	for _, x := range d.excludedNames {
		if name == x {
			return true
		}
	}
	return false
}

// outsideDevices reports whether process p runs on a GPU the container's
// gpu_devices do not name. Empty gpu_devices (e.g. --gpus all) and "all"
// name every GPU. Entries may be indexes ("1"), slots ("1.2"), or GPU-/MIG-
// UUIDs.
func outsideDevices(p gpu.Process, devices []string) bool {
	if len(devices) == 0 {
		return false
	}
	idx := strconv.Itoa(p.GPUIndex)
	for _, dv := range devices {
		switch {
		case dv == "all", dv == p.GPUUUID, dv == idx:
			return false
		case p.MIG != nil && (dv == p.MIG.UUID || dv == idx+"."+strconv.Itoa(p.MIGIndex)):
			return false
		}
	}
	return true
}

// applyTransientRule confirms a host process after two consecutive
// sightings. Identity is (pid, start time): a reused PID is a new process.
// detected_at is the first sighting. It returns the confirmed and pending
// maps and the transitions.
func applyTransientRule(seen, oldConfirmed, oldPending map[string]inventory.HostProcess, now time.Time) (confirmed, pending map[string]inventory.HostProcess, events []queued) {
	confirmed, pending = map[string]inventory.HostProcess{}, map[string]inventory.HostProcess{}
	for _, k := range sortedKeys(seen) {
		p := seen[k]
		if old, ok := oldConfirmed[k]; ok && old.StartTime == p.StartTime {
			p.DetectedAt, p.FirstSeen = old.DetectedAt, old.FirstSeen
			confirmed[k] = p
			continue
		}
		if old, ok := oldPending[k]; ok && old.StartTime == p.StartTime {
			p.FirstSeen = old.FirstSeen
			if p.FirstSeen == nil {
				p.FirstSeen = inventory.TimePtr(now)
			}
			p.DetectedAt = p.FirstSeen
			confirmed[k] = p
			events = append(events, hostDiscovered(p))
			continue
		}
		p.FirstSeen, p.DetectedAt = inventory.TimePtr(now), nil
		pending[k] = p
	}
	for _, k := range sortedKeys(oldConfirmed) {
		old := oldConfirmed[k]
		if cur, ok := confirmed[k]; ok && cur.StartTime == old.StartTime {
			continue
		}
		events = append(events, hostExited(old))
	}
	return confirmed, pending, events
}

func hostDiscovered(p inventory.HostProcess) queued {
	return queued{
		eventType: event.HostProcessDiscovered, user: p.User, message: "host GPU process discovered: pid " + strconv.Itoa(p.Pid),
		details:   event.HostProcessDiscoveredDetails{Pid: p.Pid, Cmdline: p.Cmdline, GPUMemoryMB: p.GPUMemoryMB, GPUUUID: p.GPUUUID, StartTime: p.StartTime},
		logFields: []zap.Field{zap.Int("pid", p.Pid), userField(p.User), zap.String("gpu_uuid", p.GPUUUID), zap.String("cmdline", p.Cmdline)},
	}
}

func hostExited(p inventory.HostProcess) queued {
	return queued{
		eventType: event.HostProcessExited, user: p.User, message: "host GPU process exited: pid " + strconv.Itoa(p.Pid),
		details:   event.HostProcessExitedDetails{Pid: p.Pid, Cmdline: p.Cmdline, StartTime: p.StartTime},
		logFields: []zap.Field{zap.Int("pid", p.Pid), userField(p.User), zap.String("cmdline", p.Cmdline)},
	}
}
