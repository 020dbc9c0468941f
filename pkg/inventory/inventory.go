// Package inventory is the public API of ds01-detectord's state file,
// /var/lib/ds01/workload-inventory.json: its types, Parse and Read (with the
// schema check), and the constants for origin and user_source.
//
// The file contract (docs/COMPAT.md has it whole):
//   - The daemon rewrites the whole file atomically every cycle (about every
//     30 s, and within a second of a Docker event): a reader never sees a
//     partial file. Read it whole; never hold it open.
//   - indent-2 JSON, ASCII only. Containers are keyed by their 12-character
//     ID, host processes by their PID as a decimal string.
//   - Times are UTC in the form 2026-02-04T10:30:00.123456Z (microseconds;
//     the fraction is left out when it is zero). See Time.
//   - Memory is in MiB (gpu_memory_mb), null when NVML cannot tell.
//   - The layout is a superset of the Python scanner's: every key that
//     scanner wrote is still here with the same name and type. A file without
//     schema_version is that scanner's and reads as version 1.
//   - sources says whether Docker and NVML answered last cycle. When one did
//     not, its workloads are the last known ones, not an empty list.
//   - Keys that start with "_" are the daemon's own bookkeeping.
package inventory

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SchemaVersion is the version of the state file this package writes.
// Files without a schema_version were written by the Python scanner and are
// read as version 1.
const SchemaVersion = 2

// DefaultPath is where the daemon keeps its state file.
const DefaultPath = "/var/lib/ds01/workload-inventory.json"

// State is the whole state file.
type State struct {
	LastScan         *Time                  `json:"last_scan"`
	Containers       map[string]Container   `json:"containers"`
	HostProcesses    map[string]HostProcess `json:"host_processes"`
	PendingProcesses map[string]HostProcess `json:"_pending_processes"`

	// Added by ds01-detectord.
	SchemaVersion int     `json:"schema_version"`
	Sources       Sources `json:"sources"`
	// OtherGPUProcesses are GPU processes in containers of another runtime
	// (podman, containerd, CRI-O), or whose /proc entry could not be read.
	OtherGPUProcesses []GPUProcess `json:"other_gpu_processes"`
	// UnloggedEvents are event lines written to the event log after this
	// state, or still waiting for it. A restarted daemon appends those the
	// log does not hold yet, so a crash between the state write and the
	// append neither loses nor repeats them. Internal, like
	// _pending_processes.
	UnloggedEvents []string `json:"_unlogged_events,omitempty"`
	// DockerEventsSince is the time of the last Docker event reflected in
	// this state. A restarted daemon asks Docker to replay the events after
	// it, so a container created and removed while the daemon was down is
	// still reported.
	DockerEventsSince *Time `json:"docker_events_since,omitempty"`
	// RecentlyExited maps the 12-char IDs of containers reported removed
	// to when that was reported, for as long as a replay of Docker's events
	// could bring them up again; it keeps a replay from reporting them
	// twice. Internal.
	RecentlyExited map[string]Time `json:"_recently_exited,omitempty"`
	// SealHead is the end of the event log's seal chain after this
	// state's lines (internal/seal): "<seq>:<mac>". Internal.
	SealHead string `json:"_seal_head,omitempty"`
	// GPUs are the host's physical GPUs by UUID, as NVML reported them last.
	GPUs map[string]GPU `json:"gpus"`
	// ShortProcesses are, by user, the host GPU processes that ended
	// before they were confirmed (--gpu-confirm-after) and are not in the
	// event log yet: they reach it in aggregate, one line per user per
	// --interval (detection.short_gpu_processes). Internal.
	ShortProcesses map[string]ShortProcesses `json:"_short_processes,omitempty"`
}

// ShortProcesses is one user's unconfirmed host GPU processes that ended
// since Since.
type ShortProcesses struct {
	Since               Time     `json:"since"`
	Count               int      `json:"count"`
	GPUAllocatedSeconds float64  `json:"gpu_allocated_seconds"`
	GPUHeldSeconds      float64  `json:"gpu_held_seconds"`
	GPUBusySeconds      float64  `json:"gpu_busy_seconds"`
	GPUUUIDs            []string `json:"gpu_uuids"`
}

// GPU is one physical GPU.
type GPU struct {
	Index              int    `json:"index"`
	Name               string `json:"name"`
	MemoryTotalMB      *int64 `json:"memory_total_mb"`
	MemoryUsedMB       *int64 `json:"memory_used_mb"`
	UtilizationPercent *int   `json:"utilization_percent"` // whole-device; null when unknown
	MIGMode            bool   `json:"mig_mode"`
	// AccountingMode is NVML accounting mode: null when unknown.
	AccountingMode *bool `json:"accounting_mode"`
	// UnattributedSeconds sums the active time of processes that only
	// the accounting buffer showed (they started and ended between two
	// samples) and that /proc no longer had: nobody's, but not lost.
	// Cumulative.
	UnattributedSeconds float64 `json:"unattributed_seconds"`
}

// Empty returns a state with no workloads and all maps allocated.
func Empty() State {
	return State{
		Containers:        map[string]Container{},
		HostProcesses:     map[string]HostProcess{},
		PendingProcesses:  map[string]HostProcess{},
		GPUs:              map[string]GPU{},
		SchemaVersion:     SchemaVersion,
		OtherGPUProcesses: []GPUProcess{},
	}
}

// Container is one Docker container, running or not. The first nine fields
// are the Python scanner's, in its order.
type Container struct {
	ID         string   `json:"id"` // first 12 hex characters of the container ID
	Name       string   `json:"name"`
	Origin     string   `json:"origin"` // ds01-managed, devcontainer, compose or raw-docker
	User       string   `json:"user"`
	HasGPU     bool     `json:"has_gpu"`
	GPUDevices []string `json:"gpu_devices"`
	Status     string   `json:"status"` // Docker State.Status
	Image      string   `json:"image"`
	DetectedAt Time     `json:"detected_at"` // when the detector first saw it

	// Added by ds01-detectord.
	FullID     string `json:"full_id"`
	UserSource string `json:"user_source"` // which signal decided User
	// UserSignals are every owner signal found, in precedence order. Each
	// is self-declared by whoever started the container (docs/ARCHITECTURE.md).
	UserSignals []UserSignal `json:"user_signals"`
	// UserConflict: two signals name different users, or the container's
	// processes run as a non-root UID that is not User.
	UserConflict bool     `json:"user_conflict"`
	GPUAccess    []string `json:"gpu_access"` // mechanisms that grant GPU access; empty when none
	Pid          int      `json:"pid"`        // host PID of the init process, 0 when not running
	CreatedAt    *Time    `json:"created_at"`
	// StartedAt and FinishedAt are Docker's (null when never); ExitCode is
	// the last exit code, null while it has never exited.
	StartedAt  *Time `json:"started_at"`
	FinishedAt *Time `json:"finished_at"`
	ExitCode   *int  `json:"exit_code"`

	// GPU use, from NVML: one entry per process and GPU.
	GPUProcesses []GPUProcess `json:"gpu_processes"`
	// GPUMemoryMB totals the known memory of GPUProcesses; null when the
	// container has no GPU process (ds01-workloads --gpu-only reads it).
	GPUMemoryMB *int64 `json:"gpu_memory_mb"`
	// GPUWithoutAccess flags a container that uses a GPU although its
	// configuration grants none.
	GPUWithoutAccess bool `json:"gpu_without_access"`

	// Held versus used (all null or zero until a GPU reports them).
	// GPUUtilizationPercent is the mean, over the GPUs it has processes on,
	// of its processes' summed SM utilisation on each (capped at 100);
	// null when any of them is unknown (MIG, NOT_SUPPORTED).
	GPUUtilizationPercent *int `json:"gpu_utilization_percent"`
	// GPUIdleSince is when it last went below --gpu-idle-threshold on every
	// GPU it holds memory on; null while active, unknown or holding none.
	GPUIdleSince *Time `json:"gpu_idle_since"`
	// GPUIdle: it has been idle for --gpu-idle-after (detection.gpu_idle
	// was emitted; detection.gpu_active ends it).
	GPUIdle bool `json:"gpu_idle"`
	// Cumulative GPU-seconds, surviving restarts: running time x GPUs its
	// configuration grants (host processes: x GPUs held), x GPUs it has
	// processes on, and x GPUs where it was at or above the threshold.
	GPUAllocatedSeconds float64 `json:"gpu_allocated_seconds"`
	GPUHeldSeconds      float64 `json:"gpu_held_seconds"`
	GPUBusySeconds      float64 `json:"gpu_busy_seconds"`
	// OwnerSeconds splits the three counters by owner once the owner of a
	// container changed during its life (docker rename, a label update:
	// detection.owner_changed): each second stays with the user who owned
	// the container then. Absent while it has had one owner.
	OwnerSeconds []OwnerSeconds `json:"gpu_seconds_by_owner,omitempty"`

	// Activity, read from the container's cgroup and network namespace at
	// each reconciliation scan while it runs (never from Docker's stats
	// API). Each is null when unknown, never 0 for unknown.
	// CPUPercent is its CPU use over the interval since the last
	// reading, 100 = one core, as docker stats shows it; CPUUsageSeconds
	// the CPU time its cgroup has used.
	CPUPercent      *float64 `json:"cpu_percent"`
	CPUUsageSeconds *float64 `json:"cpu_usage_seconds"`
	// MemoryBytes is the working set, as docker stats computes it: usage
	// less inactive file pages.
	MemoryBytes *int64 `json:"memory_bytes"`
	// NetRxBytes and NetTxBytes total every interface of its network
	// namespace but lo, since it started; null in the host's namespace.
	// NetBytesPerInterval is rx+tx since the last reading.
	NetRxBytes          *int64 `json:"net_rx_bytes"`
	NetTxBytes          *int64 `json:"net_tx_bytes"`
	NetBytesPerInterval *int64 `json:"net_bytes_per_interval"`
	BlkioReadBytes      *int64 `json:"blkio_read_bytes"`
	BlkioWriteBytes     *int64 `json:"blkio_write_bytes"`

	// The idle verdict (docs/ARCHITECTURE.md, "Idle by the site's rule"): every signal it has (GPU when it
	// holds one, CPU, network) under its threshold for
	// idle_detection_window consecutive reconciliation scans past the grace
	// period. IdleSince is when the verdict was given (null while not
	// idle); IdleDeadline is IdleSince plus the timeout its policy gives
	// (null: none, or exempt); IdleScans counts the consecutive idle scans
	// past the grace period; IdleSignals are each signal's value and
	// threshold at the last scan; IdlePolicy says which rule applied.
	IdleSince    *Time        `json:"idle_since"`
	IdleDeadline *Time        `json:"idle_deadline"`
	IdleScans    int          `json:"idle_scans"`
	IdleSignals  *IdleSignals `json:"idle_signals"`
	IdlePolicy   *IdlePolicy  `json:"idle_policy"`
	// ActivityAt is when the activity was read (Unix nanoseconds, on the
	// reader's clock); in memory only: the next reading's rates start here.
	ActivityAt int64 `json:"-"`
}

// IdleSignals are the signals of the idle verdict at the last scan. GPU
// is null when the workload holds no GPU (it is then not a signal).
type IdleSignals struct {
	GPU     *IdleSignal `json:"gpu"`
	CPU     IdleSignal  `json:"cpu"`
	Network IdleSignal  `json:"network"`
}

// IdleSignal is one signal's value (null: unknown) and the threshold it is
// compared with: GPU in percent SM, CPU in percent of one core, network in
// bytes per interval. Idle: the value is under the threshold.
type IdleSignal struct {
	Value     *float64 `json:"value"`
	Threshold float64  `json:"threshold"`
	Idle      bool     `json:"idle"`
}

// IdlePolicy is the rule the idle verdict applied to a workload.
type IdlePolicy struct {
	// Source is the policy file's path, or "flags" without one.
	Source string `json:"source"`
	// Group is the owner's group and GroupSource how it was found:
	// "members-file", "inline-members" or "default_group" ("" with flags).
	Group       string `json:"group"`
	GroupSource string `json:"group_source"`
	// IdleTimeoutH is the timeout in hours (null: none or exempt), and
	// TimeoutSource where it came from: "user-override", "group",
	// "defaults", "container_types.<type>", or "none".
	IdleTimeoutH        *float64 `json:"idle_timeout_h"`
	TimeoutSource       string   `json:"timeout_source"`
	IdleDetectionWindow int      `json:"idle_detection_window"`
	GracePeriodM        float64  `json:"grace_period_m"`
}

// UserSignal is one owner signal: which source said which user.
type UserSignal struct {
	Source string `json:"source"` // one of the UserSource values
	User   string `json:"user"`
}

// GPU access mechanisms, as recorded in Container.GPUAccess.
const (
	AccessNvidiaRuntime = "nvidia-runtime" // nvidia runtime with NVIDIA_VISIBLE_DEVICES set
	AccessDeviceRequest = "device-request" // --gpus / DeviceRequests
	AccessCDI           = "cdi"            // CDI device nvidia.com/gpu=…
	AccessDeviceNode    = "device-node"    // --device /dev/nvidia*
	AccessPrivileged    = "privileged"     // --privileged sees every device
)

// UserSource values: which signal named a container's user (the first that
// matched, in this order). Every one of them is set by whoever starts the
// container; see docs/ARCHITECTURE.md on ownership.
const (
	UserSourceLabelUser    = "label:ds01.user"
	UserSourceLabelMLC     = "label:aime.mlc.USER"
	UserSourceLocalFolder  = "label:devcontainer.local_folder"
	UserSourceComposeDir   = "label:com.docker.compose.project.working_dir"
	UserSourceBindMount    = "bind-mount"    // a bind mount of /home/<user>
	UserSourceNameUID      = "name-uid"      // a name ending ._.<uid>
	UserSourceProcessOwner = "process-owner" // the init process's non-root UID
	UserSourceNone         = "none"          // user is UnknownUser
	UnknownUser            = "unknown"
)

// Origins.
const (
	OriginManaged      = "ds01-managed"
	OriginDevcontainer = "devcontainer"
	OriginCompose      = "compose"
	OriginRawDocker    = "raw-docker"
)

// OwnerSeconds are one owner's share of a container's GPU-seconds.
type OwnerSeconds struct {
	User                string  `json:"user"`
	GPUAllocatedSeconds float64 `json:"gpu_allocated_seconds"`
	GPUHeldSeconds      float64 `json:"gpu_held_seconds"`
	GPUBusySeconds      float64 `json:"gpu_busy_seconds"`
}

// HostProcess is a process using a GPU outside any container. The first six
// fields are the Python scanner's.
type HostProcess struct {
	Pid         int    `json:"pid"`
	User        string `json:"user"`
	Cmdline     string `json:"cmdline"`
	GPUMemoryMB *int64 `json:"gpu_memory_mb"` // null when NVML cannot tell
	GPUUUID     string `json:"gpu_uuid"`
	DetectedAt  *Time  `json:"detected_at,omitempty"` // absent in _pending_processes

	// Added by ds01-detectord.
	UID       uint32   `json:"uid"`
	StartTime uint64   `json:"start_time"` // /proc/<pid>/stat field 22: with pid, the identity
	GPUIndex  int      `json:"gpu_index"`
	MIG       *MIGInfo `json:"mig"`
	FirstSeen *Time    `json:"first_seen,omitempty"` // first sighting; detected_at copies it on confirmation
	// ClaimedContainer is the 12-char ID of the Docker container this
	// process's cgroup names although it does not run in it (a scope made
	// in a user's own delegated tree, say), or that Docker does not list.
	ClaimedContainer string `json:"claimed_container,omitempty"`
	// CmdlineError says why cmdline is empty: /proc/<pid>/cmdline could
	// not be read ("permission denied", "no such process"), or held
	// nothing (a zombie, a kernel thread).
	CmdlineError string `json:"cmdline_error,omitempty"`
	// Runtime is the container runtime the cgroup's name claims when the
	// process sits in a user's own delegated tree (user@<uid>.service) in
	// a cgroup named like another runtime's container (libpod-<id>.scope:
	// rootless podman, or systemd-run --user --scope --unit=libpod-…).
	// Anyone can name a scope there, so the process is its user's, like
	// any host process; this field only records the claim.
	Runtime string `json:"runtime,omitempty"`
	// SMUtilPercent is the process's summed SM utilisation over its GPUs.
	SMUtilPercent *int `json:"sm_util_percent"`
	// CPUPercent is the process's CPU use (utime+stime of
	// /proc/<pid>/stat) over the interval since the last reconciliation
	// scan, 100 = one core; null when unknown (its first scan).
	CPUPercent *float64 `json:"cpu_percent"`
	// CPUTicks and CPUAt are that reading (clock ticks; Unix nanoseconds);
	// in memory only.
	CPUTicks uint64 `json:"-"`
	CPUAt    int64  `json:"-"`

	// Held versus used (all null or zero until a GPU reports them).
	// GPUUtilizationPercent is the mean, over the GPUs it has processes on,
	// of its processes' summed SM utilisation on each (capped at 100);
	// null when any of them is unknown (MIG, NOT_SUPPORTED).
	GPUUtilizationPercent *int `json:"gpu_utilization_percent"`
	// GPUIdleSince is when it last went below --gpu-idle-threshold on every
	// GPU it holds memory on; null while active, unknown or holding none.
	GPUIdleSince *Time `json:"gpu_idle_since"`
	// GPUIdle: it has been idle for --gpu-idle-after (detection.gpu_idle
	// was emitted; detection.gpu_active ends it).
	GPUIdle bool `json:"gpu_idle"`
	// Cumulative GPU-seconds, surviving restarts: running time x GPUs its
	// configuration grants (host processes: x GPUs held), x GPUs it has
	// processes on, and x GPUs where it was at or above the threshold.
	GPUAllocatedSeconds float64 `json:"gpu_allocated_seconds"`
	GPUHeldSeconds      float64 `json:"gpu_held_seconds"`
	GPUBusySeconds      float64 `json:"gpu_busy_seconds"`
}

// GPUProcess is one process on one GPU or MIG device, inside a container.
type GPUProcess struct {
	Pid         int      `json:"pid"`
	GPUIndex    int      `json:"gpu_index"`
	GPUUUID     string   `json:"gpu_uuid"` // the physical GPU
	MIG         *MIGInfo `json:"mig"`
	GPUMemoryMB *int64   `json:"gpu_memory_mb"`
	// SMUtilPercent is the highest SM utilisation among NVML's samples of
	// this process on this GPU since the last scan; 0 when it had none (it
	// was idle); null when NVML cannot tell (MIG, NOT_SUPPORTED).
	SMUtilPercent *int `json:"sm_util_percent"`
	// OutsideGPUDevices: the process runs on a GPU that is not among the
	// container's gpu_devices.
	OutsideGPUDevices bool `json:"outside_gpu_devices,omitempty"`
	// Attribution says how a process in gpu_processes was tied to its
	// container: "cgroup+pidns" (its cgroup is the container's and its PID
	// namespace the container's init's) or "cgroup" (the namespace could
	// not be read: the daemon runs without CAP_SYS_PTRACE).
	Attribution string `json:"attribution,omitempty"`

	// Only in other_gpu_processes.
	Runtime     string  `json:"runtime,omitempty"` // podman, containerd, cri-o, docker, unknown
	ContainerID string  `json:"container_id,omitempty"`
	User        string  `json:"user,omitempty"`
	UID         *uint32 `json:"uid,omitempty"`
	Cmdline     string  `json:"cmdline,omitempty"`
	Error       string  `json:"error,omitempty"` // why it could not be attributed
}

// MIGInfo identifies a MIG device.
type MIGInfo struct {
	UUID              string `json:"uuid"`
	GPUInstanceID     int    `json:"gpu_instance_id"`
	ComputeInstanceID int    `json:"compute_instance_id"`
}

// Sources reports the health of each input of the last cycle.
type Sources struct {
	Docker SourceHealth `json:"docker"`
	GPU    SourceHealth `json:"gpu"`
	// Proc is /proc: failing when a read failed for a reason other than a
	// process being gone (too many open files, permission, I/O). GPU use
	// is then the last known, as when the GPU source fails.
	Proc SourceHealth `json:"proc"`
}

// SourceHealth is the health of one input.
type SourceHealth struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	LastOK *Time  `json:"last_ok"`
}

// Time is a UTC instant written the way the Python scanner wrote it:
// 2026-02-04T10:30:00.123456Z, with the fraction left out when the
// microseconds are exactly zero (Python's isoformat).
type Time struct{ time.Time }

// NewTime truncates t to microseconds and converts it to UTC.
func NewTime(t time.Time) Time { return Time{t.UTC().Truncate(time.Microsecond)} }

// TimePtr is NewTime returning a pointer.
func TimePtr(t time.Time) *Time { v := NewTime(t); return &v }

// String formats the time in the Python scanner's format.
func (t Time) String() string { return string(t.appendTo(make([]byte, 0, 27))) }

func (t Time) appendTo(b []byte) []byte {
	u := t.UTC()
	if u.Nanosecond()/1000 == 0 {
		return u.AppendFormat(b, "2006-01-02T15:04:05Z")
	}
	return u.AppendFormat(b, "2006-01-02T15:04:05.000000Z")
}

// MarshalJSON implements json.Marshaler.
func (t Time) MarshalJSON() ([]byte, error) {
	b := append(make([]byte, 0, 29), '"')
	return append(t.appendTo(b), '"'), nil
}

// UnmarshalJSON accepts any RFC 3339 time.
func (t *Time) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("time: %w", err)
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	*t = NewTime(v)
	return nil
}

// GrantedGPUs is how many GPUs a container's configuration grants; see
// CountGranted. The daemon's allocated GPU-seconds, its
// ds01_workload_gpus_allocated and ds01-workloads all count with it.
func (c *Container) GrantedGPUs(gpus map[string]GPU) int {
	n, _ := CountGranted(c.HasGPU, c.GPUDevices, gpus)
	return n
}

// CountGranted counts the GPUs a device list grants on a host whose GPUs
// are gpus (by UUID, as NVML reported them): 0 without GPU access; every
// host GPU for --gpus all (no devices named) or "all"; else each distinct
// device once. An index and the UUID of the same GPU are one GPU, a list
// like 0,0,0,0 is one, and comma lists in one element (the Python
// scanner's files) are split. Devices the host does not have (an index
// past the last GPU, an unknown UUID) are kept, counted once each, and
// returned in unknown; with no GPUs known (NVML unavailable) nothing can be
// checked and each distinct name counts once.
func CountGranted(hasGPU bool, devices []string, gpus map[string]GPU) (n int, unknown []string) {
	if !hasGPU {
		return 0, nil
	}
	byIndex := make(map[string]string, len(gpus))
	for uuid, g := range gpus {
		byIndex[strconv.Itoa(g.Index)] = uuid
	}
	seen := map[string]bool{}
	named := false
	for _, d := range devices {
		for _, dv := range strings.Split(d, ",") {
			dv = strings.TrimSpace(dv)
			if dv == "" {
				continue
			}
			named = true
			if dv == "all" {
				return len(gpus), nil
			}
			key := dv
			if uuid, ok := byIndex[dv]; ok {
				key = uuid
			}
			if seen[key] {
				continue
			}
			seen[key] = true
			if _, known := gpus[key]; !known && len(gpus) > 0 && !isMIGName(dv, byIndex) {
				unknown = append(unknown, dv)
			}
		}
	}
	if !named {
		return len(gpus), nil
	}
	return len(seen), unknown
}

// isMIGName reports whether dv names a MIG device: a MIG UUID, or an
// <index>.<slot> of a known GPU. NVML's GPU list does not hold those.
func isMIGName(dv string, byIndex map[string]string) bool {
	if strings.HasPrefix(dv, "MIG-") {
		return true
	}
	gpu, _, ok := strings.Cut(dv, ".")
	_, known := byIndex[gpu]
	return ok && known
}
