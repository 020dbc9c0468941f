// Package view is the admin's view of the state file for ds01-workloads:
// it turns the inventory into rows, filters and sorts them, and renders
// tables, the per-GPU view, the summary and --json.
package view

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Workload is one row: a container, a host GPU process, or a GPU process in
// another runtime's container. It is also the --json shape.
type Workload struct {
	Kind        string   `json:"kind"`
	Type        string   `json:"type"` // origin for containers, else the kind
	ID          string   `json:"id"`   // 12-hex container ID, or PID:<pid>
	Name        string   `json:"name"` // container name, or command line
	User        string   `json:"user"`
	UserSource  string   `json:"user_source,omitempty"`
	Status      string   `json:"status"` // Docker status; active or pending for processes
	HasGPU      bool     `json:"has_gpu"`
	GPUAccess   []string `json:"gpu_access"`
	GPUs        []string `json:"gpus"` // devices (containers) or the GPU a process runs on
	GPUMemoryMB *int64   `json:"gpu_memory_mb"`
	Image       string   `json:"image,omitempty"`
	Pid         int      `json:"pid,omitempty"`
	DetectedAt  string   `json:"detected_at,omitempty"`
	// AgeSeconds counts from the container's creation (docker ps's
	// CREATED), or from a process's first sighting; null when unknown.
	AgeSeconds *int64   `json:"age_seconds"`
	Flags      []string `json:"flags,omitempty"` // gpu-without-access, outside-gpu-devices, unknown-gpu-device

	// Added with held versus used.
	FullID     string   `json:"full_id,omitempty"`
	GPUsInUse  []string `json:"gpus_in_use"`  // GPU indexes (3/gi1 for a MIG instance) it has processes on
	Granted    string   `json:"gpus_granted"` // what the configuration grants: "all", "0,1", or ""
	StatusText string   `json:"status_text"`  // docker-style: Up 3 days, Exited (137) 2 hours ago
	CreatedAt  string   `json:"created_at,omitempty"`
	// UtilPercent is the mean SM utilisation over the GPUs in use; null
	// when unknown (MIG, NOT_SUPPORTED) or none.
	UtilPercent   *int    `json:"gpu_utilization_percent"`
	IdleSince     string  `json:"gpu_idle_since,omitempty"`
	IdleSeconds   *int64  `json:"idle_seconds"` // below the threshold this long while holding GPU memory
	Idle          bool    `json:"gpu_idle"`     // idle for --gpu-idle-after (detection.gpu_idle)
	UserConflict  bool    `json:"user_conflict"`
	AllocatedSecs float64 `json:"gpu_allocated_seconds"`
	HeldSecs      float64 `json:"gpu_held_seconds"`
	BusySecs      float64 `json:"gpu_busy_seconds"`

	// Added with the idle verdict (the site's rule): CPU percent (100 =
	// one core) and working-set memory from the cgroup, and the verdict.
	CPUPercent    *float64 `json:"cpu_percent"`
	MemoryBytes   *int64   `json:"memory_bytes"`
	IdleRuleSince string   `json:"idle_since,omitempty"`    // idle by the site's rule since
	IdleFor       *int64   `json:"idle_for_seconds"`        // seconds since idle_since; null while not idle
	IdleDeadline  string   `json:"idle_deadline,omitempty"` // idle_since + the policy's timeout
	IdleGroup     string   `json:"idle_group,omitempty"`    // the policy group that applied
	overDeadline  bool

	running bool
	granted int               // GPUs its configuration grants (inventory.CountGranted)
	gpuMem  map[string]*int64 // by GPU index label: memory held there
	gpuUtil map[string]*int   // by GPU index label: summed utilisation, nil when unknown
}

// addUse records memory and utilisation held on one GPU.
func (w *Workload) addUse(gpu string, mem *int64, util *int) {
	old, seen := w.gpuMem[gpu]
	switch {
	case !seen:
		w.gpuMem[gpu] = mem
	case old != nil && mem != nil:
		v := *old + *mem
		w.gpuMem[gpu] = &v
	case old == nil:
		w.gpuMem[gpu] = mem
	}
	workload.AddUtil(w.gpuUtil, gpu, util)
}

// Running reports whether w runs: a running container, or a confirmed
// process.
func (w Workload) Running() bool { return w.running }

// OnGPU reports whether w has processes on GPU index idx (any of its MIG
// instances included).
func (w Workload) OnGPU(idx int) bool {
	for _, g := range w.GPUsInUse {
		if g == strconv.Itoa(idx) || strings.HasPrefix(g, strconv.Itoa(idx)+"/") {
			return true
		}
	}
	return false
}

func sortedLabels(m map[string]*int64) []string { return slices.Sorted(maps.Keys(m)) }

func gpuLabel(idx int, mig *inventory.MIGInfo) string {
	if mig == nil {
		return strconv.Itoa(idx)
	}
	return fmt.Sprintf("%d/gi%d", idx, mig.GPUInstanceID)
}

func age(now time.Time, t *inventory.Time) (*int64, string) {
	if t == nil || t.IsZero() {
		return nil, ""
	}
	s := int64(now.Sub(t.Time) / time.Second)
	if s < 0 {
		s = 0
	}
	return &s, t.String()
}

// FormatAge renders seconds the Python scanner's way: Ns, Nm, Nh or Nd, floored.
func FormatAge(s *int64) string {
	if s == nil {
		return "-"
	}
	v := *s
	switch {
	case v < 60:
		return fmt.Sprintf("%ds", v)
	case v < 3600:
		return fmt.Sprintf("%dm", v/60)
	case v < 86400:
		return fmt.Sprintf("%dh", v/3600)
	}
	return fmt.Sprintf("%dd", v/86400)
}

// Rows turns the state into workloads: containers (by name), then host
// processes and pending ones (by PID), then other runtimes' processes.
func Rows(st inventory.State, now time.Time) []Workload {
	var out []Workload
	keys := make([]string, 0, len(st.Containers))
	for k := range st.Containers {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := st.Containers[keys[i]], st.Containers[keys[j]]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.ID < b.ID
	})
	for _, k := range keys {
		c := st.Containers[k]
		w := Workload{
			Kind: workload.KindContainer, Type: c.Origin, ID: c.ID, Name: c.Name, User: c.User, UserSource: c.UserSource,
			Status: c.Status, HasGPU: c.HasGPU, GPUAccess: c.GPUAccess, GPUs: c.GPUDevices, GPUMemoryMB: c.GPUMemoryMB,
			Image: c.Image, Pid: c.Pid, running: c.Status == "running",
		}
		_, w.DetectedAt = age(now, &c.DetectedAt)
		w.AgeSeconds, w.CreatedAt = age(now, c.CreatedAt)
		if w.AgeSeconds == nil {
			w.AgeSeconds, _ = age(now, &c.DetectedAt)
		}
		w.FullID, w.UserConflict = c.FullID, c.UserConflict
		w.StatusText = dockerStatus(c, now)
		w.UtilPercent, w.Idle = c.GPUUtilizationPercent, c.GPUIdle
		w.IdleSeconds, w.IdleSince = age(now, c.GPUIdleSince)
		w.AllocatedSecs, w.HeldSecs, w.BusySecs = c.GPUAllocatedSeconds, c.GPUHeldSeconds, c.GPUBusySeconds
		w.CPUPercent, w.MemoryBytes = c.CPUPercent, c.MemoryBytes
		w.IdleFor, w.IdleRuleSince = age(now, c.IdleSince)
		if c.IdleDeadline != nil {
			w.IdleDeadline = c.IdleDeadline.String()
			w.overDeadline = now.After(c.IdleDeadline.Time)
		}
		if c.IdlePolicy != nil {
			w.IdleGroup = c.IdlePolicy.Group
		}
		w.gpuMem, w.gpuUtil = map[string]*int64{}, map[string]*int{}
		for _, p := range c.GPUProcesses {
			w.addUse(gpuLabel(p.GPUIndex, p.MIG), p.GPUMemoryMB, p.SMUtilPercent)
		}
		// Files from the Python scanner hold a comma list in one element.
		w.GPUs = []string{}
		for _, d := range c.GPUDevices {
			for _, p := range strings.Split(d, ",") {
				if p = strings.TrimSpace(p); p != "" {
					w.GPUs = append(w.GPUs, p)
				}
			}
		}
		if w.GPUAccess == nil {
			w.GPUAccess = []string{}
		}
		switch {
		case !c.HasGPU:
		case len(w.GPUs) == 0:
			w.Granted = "all"
		default:
			w.Granted = strings.Join(w.GPUs, ",")
		}
		w.GPUsInUse = sortedLabels(w.gpuMem)
		var unknown []string
		w.granted, unknown = inventory.CountGranted(c.HasGPU, c.GPUDevices, st.GPUs)
		if c.GPUWithoutAccess {
			w.Flags = append(w.Flags, "gpu-without-access")
		}
		if c.UserConflict {
			w.Flags = append(w.Flags, "owner-conflict")
		}
		if len(unknown) > 0 { // a device this host's NVML does not report
			w.Flags = append(w.Flags, "unknown-gpu-device")
		}
		for _, p := range c.GPUProcesses {
			if p.OutsideGPUDevices {
				w.Flags = append(w.Flags, "outside-gpu-devices")
				break
			}
		}
		out = append(out, w)
	}
	out = append(out, processRows(st.HostProcesses, "active", now, st.GPUs)...)
	out = append(out, processRows(st.PendingProcesses, "pending", now, st.GPUs)...)
	for _, p := range st.OtherGPUProcesses {
		user := p.User
		if user == "" {
			user = "unknown"
		}
		name := p.Cmdline
		if p.ContainerID != "" {
			name = p.Runtime + ":" + workload.ShortID(p.ContainerID) + " " + name
		}
		w := Workload{
			Kind: workload.KindOtherRuntime, Type: workload.KindOtherRuntime, ID: "PID:" + strconv.Itoa(p.Pid), Name: strings.TrimSpace(name),
			User: user, Status: "active", StatusText: "active", HasGPU: true, GPUAccess: []string{}, GPUs: []string{gpuLabel(p.GPUIndex, p.MIG)},
			GPUMemoryMB: p.GPUMemoryMB, Pid: p.Pid, running: true, UtilPercent: p.SMUtilPercent,
			gpuMem: map[string]*int64{}, gpuUtil: map[string]*int{},
		}
		w.addUse(gpuLabel(p.GPUIndex, p.MIG), p.GPUMemoryMB, p.SMUtilPercent)
		w.GPUsInUse = sortedLabels(w.gpuMem)
		out = append(out, w)
	}
	return out
}

// processGPU is the index of a host process's GPU. The Python scanner's
// (v1) entries have gpu_uuid only, read as index 0: the UUID decides, from
// the state's gpus; -1 when a v1 entry's GPU is not there (show the UUID).
func processGPU(p inventory.HostProcess, gpus map[string]inventory.GPU) int {
	if g, ok := gpus[p.GPUUUID]; ok {
		return g.Index
	}
	if p.StartTime == 0 && p.GPUUUID != "" && p.GPUIndex == 0 {
		return -1
	}
	return p.GPUIndex
}

func processRows(m map[string]inventory.HostProcess, status string, now time.Time, gpus map[string]inventory.GPU) []Workload {
	pids := make([]int, 0, len(m))
	byPid := map[int]inventory.HostProcess{}
	for _, p := range m {
		pids = append(pids, p.Pid)
		byPid[p.Pid] = p
	}
	sort.Ints(pids)
	var out []Workload
	for _, pid := range pids {
		p := byPid[pid]
		p.GPUIndex = processGPU(p, gpus)
		label := gpuLabel(p.GPUIndex, p.MIG)
		if p.GPUIndex < 0 { // a v1 entry on a GPU this state does not list
			label = p.GPUUUID
		}
		w := Workload{
			Kind: workload.KindHostProcess, Type: workload.KindHostProcess, ID: "PID:" + strconv.Itoa(pid), Name: p.Cmdline, User: p.User,
			UserSource: "process-owner", Status: status, StatusText: status, HasGPU: true, GPUAccess: []string{},
			GPUs: []string{label}, GPUMemoryMB: p.GPUMemoryMB, Pid: pid, running: status == "active",
			UtilPercent: p.GPUUtilizationPercent, Idle: p.GPUIdle, CPUPercent: p.CPUPercent,
			AllocatedSecs: p.GPUAllocatedSeconds, HeldSecs: p.GPUHeldSeconds, BusySecs: p.GPUBusySeconds,
			gpuMem: map[string]*int64{}, gpuUtil: map[string]*int{},
		}
		if strings.TrimSpace(w.Name) == "" {
			why := p.CmdlineError
			if why == "" {
				why = "no command line recorded"
			}
			w.Name = "(unreadable: " + why + ")"
		}
		w.IdleSeconds, w.IdleSince = age(now, p.GPUIdleSince)
		w.addUse(label, p.GPUMemoryMB, p.SMUtilPercent)
		w.GPUsInUse = sortedLabels(w.gpuMem)
		seen := p.DetectedAt
		if seen == nil {
			seen = p.FirstSeen
		}
		w.AgeSeconds, w.DetectedAt = age(now, seen)
		out = append(out, w)
	}
	return out
}

// GPUCount is how many GPUs a workload holds, for --by-user: for a
// container, what its configuration grants, counted as the daemon's
// allocated seconds and ds01_workload_gpus_allocated count it
// (inventory.CountGranted: all is every host GPU, devices once each); one
// per process.
func GPUCount(w Workload) int {
	if w.Kind != workload.KindContainer {
		return 1
	}
	return w.granted
}
