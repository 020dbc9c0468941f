// Package reconcile is the middle step of a scan. It takes what the sources
// reported (containers as Docker lists them, GPU processes as NVML lists
// them, the /proc facts about those PIDs) together with the state reported
// last cycle and the time, and returns the new state and the transitions
// between the two.
//
// Everything here is a pure function: no I/O, no clock, no goroutines, no
// logger: the transitions and warnings are data. The cycle package gathers
// the facts (internal/facts) before and delivers the result and writes the
// journal lines after. This package builds the containers (classification,
// owners, ephemeral containers, the replay checkpoint) and runs the steps
// in order; its subpackages do one job each: attribution (where each GPU
// process belongs), gputime (GPU-seconds, host process confirmation, short
// processes) and idle (the activity idle verdict).
package reconcile

import (
	"fmt"
	"sort"
	"time"

	"github.com/ds01/ds01-detectord/internal/classify"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/policy"
	"github.com/ds01/ds01-detectord/internal/reconcile/attribution"
	"github.com/ds01/ds01-detectord/internal/reconcile/gputime"
	"github.com/ds01/ds01-detectord/internal/reconcile/idle"
	"github.com/ds01/ds01-detectord/internal/textcut"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Rules are the site's settings that change what is reported.
type Rules struct {
	// Excluded are the system process names left out of host processes.
	Excluded []string
	// KeepSecrets turns off the masking of secret-looking arguments in
	// recorded command lines.
	KeepSecrets bool
	// IdleThreshold (percent SM) and IdleAfter define an idle workload;
	// MaxGap caps the time one cycle's counters account for. Zero values
	// take the defaults.
	IdleThreshold int
	IdleAfter     time.Duration
	MaxGap        time.Duration
	// Policy is the idle verdict's rule; nil: policy.Defaults, no timeout.
	Policy *policy.Policy
	// ConfirmAfter is how long a host GPU process must have been seen
	// before it is confirmed (--gpu-confirm-after); Interval is --interval,
	// the least time between two aggregate lines of one user's short
	// processes. Zero: the defaults.
	ConfirmAfter time.Duration
	Interval     time.Duration
}

func (r Rules) policy() *policy.Policy {
	if r.Policy == nil {
		return flagsPolicy
	}
	return r.Policy
}

var flagsPolicy = policy.FromFlags(policy.Defaults)

// attributionRules are the rules attribution follows.
func (r Rules) attributionRules() attribution.Rules {
	return attribution.Rules{Excluded: r.Excluded, KeepSecrets: r.KeepSecrets}
}

// gpuRules are the rules GPU-time accounting follows, defaults filled in.
func (r Rules) gpuRules() gputime.Rules {
	return gputime.Rules{Attribution: r.attributionRules(), IdleThreshold: r.IdleThreshold, IdleAfter: r.IdleAfter, MaxGap: r.MaxGap,
		ConfirmAfter: r.ConfirmAfter, Interval: r.Interval}.WithDefaults()
}

// DefaultExcluded are the system GPU processes left out by name
// (attribution.DefaultExcluded).
var DefaultExcluded = attribution.DefaultExcluded

// DefaultConfirmAfter is how long a host GPU process is seen before it is
// confirmed, unless Rules say otherwise.
const DefaultConfirmAfter = gputime.DefaultConfirmAfter

// UserGPUSeconds are one user's GPU-seconds of one cycle.
type UserGPUSeconds = gputime.UserGPUSeconds

// Result is the outcome of one reconcile.
type Result struct {
	State       inventory.State
	Transitions []Transition
	// Warnings are conditions worth one journal line each, reported when
	// they start (a container using a GPU its configuration does not grant).
	Warnings []Warning
	// Excluded counts the system processes (UID < 1000) left out of host
	// processes by name this cycle.
	Excluded int
	// UserGPUSeconds are this cycle's GPU-seconds held and busy, by user.
	UserGPUSeconds map[string]UserGPUSeconds
	// AccountingOnly are the processes only accounting mode saw that were
	// charged to their owners this cycle (already in UserGPUSeconds).
	AccountingOnly []inventory.HostProcess
}

// Reconcile computes the new state from the previous one and this cycle's
// facts. prev is not modified.
func Reconcile(prev inventory.State, f facts.Scan, rules Rules) Result {
	now := f.Now
	gr := rules.gpuRules()
	next := inventory.Empty()
	next.Sources = prev.Sources
	next.DockerEventsSince = prev.DockerEventsSince
	next.HostProcesses = prev.HostProcesses
	next.PendingProcesses = prev.PendingProcesses
	next.ShortProcesses = prev.ShortProcesses
	next.LastScan = inventory.TimePtr(now)
	var res Result
	// active are the containers the GPU and usage steps must visit: all of
	// them but the settled ones buildContainers took over unchanged.
	var active []string

	next.Sources.Docker = health(prev.Sources.Docker, f.DockerErr, now)
	if f.DockerErr != nil {
		for k, c := range prev.Containers { // keep the last known containers
			next.Containers[k] = c
			active = append(active, k)
		}
	} else {
		next.DockerEventsSince = checkpoint(prev.DockerEventsSince, f.Docker)
		next.Containers, active = buildContainers(f.Docker.Containers, prev.Containers, f, now)
		res.Transitions = append(res.Transitions, diffContainers(prev.Containers, next.Containers, active)...)
		res.Transitions = append(res.Transitions, ownerChanges(prev.Containers, next.Containers, active)...)
		res.Transitions = append(res.Transitions, ephemeral(prev, next, f)...)
	}
	next.RecentlyExited = recentlyExited(prev, next, res.Transitions, now)

	next.Sources.GPU = health(prev.Sources.GPU, f.GPUErr, now)
	next.Sources.Proc = health(prev.Sources.Proc, f.ProcErr, now)
	if f.GPUErr == nil && f.ProcErr != nil { // NVML's list cannot be attributed
		f.GPUErr = fmt.Errorf("/proc unreadable: %w", f.ProcErr)
	}
	if f.GPUErr != nil { // keep what was known of GPU use
		for _, k := range active { // the settled ones are their last entries already
			if o, ok := prev.Containers[k]; ok {
				c := next.Containers[k]
				c.GPUProcesses, c.GPUMemoryMB, c.GPUWithoutAccess = o.GPUProcesses, o.GPUMemoryMB, o.GPUWithoutAccess
				next.Containers[k] = c
			}
		}
		next.OtherGPUProcesses = prev.OtherGPUProcesses
		next.GPUs = prev.GPUs
		var ts []Transition
		ts, res.UserGPUSeconds = gputime.Account(prev, &next, active, f, nil, gputime.Integrated{}, gr)
		res.Transitions = append(res.Transitions, ts...)
	} else {
		for _, k := range active {
			c := next.Containers[k]
			c.GPUProcesses, c.GPUMemoryMB, c.GPUWithoutAccess = []inventory.GPUProcess{}, nil, false
			next.Containers[k] = c
		}
		var seen map[string]inventory.HostProcess
		var hostProcs map[string][]facts.GPUProcess
		var withGPU []string
		seen, hostProcs, next.OtherGPUProcesses, withGPU, res.Excluded = attribution.Attribute(f, next.Containers, gr.Attribution)
		attribution.ProcessOwners(f, next.Containers, withGPU)
		// Entries the Python scanner wrote (no start time) join the
		// running processes they describe: a switch-over emits nothing.
		prev.HostProcesses, prev.PendingProcesses = adoptLegacy(prev.HostProcesses, prev.PendingProcesses, seen, f, rules.KeepSecrets)
		samples, legacy := f.Samples, f.Samples == nil
		if legacy {
			samples = gputime.LegacySamples(prev, f)
		}
		in := gputime.Integrate(samples, legacy, f, next.Containers, gr)
		var hostEvents []Transition
		var short []inventory.HostProcess
		next.HostProcesses, next.PendingProcesses, hostEvents, short = gputime.ConfirmHosts(seen, prev.HostProcesses, prev.PendingProcesses, now, in, gr.ConfirmAfter)
		res.Transitions = append(res.Transitions, hostEvents...)
		unattributed, owned := gputime.AccountingOnly(samples, f, gr)
		short = append(short, owned...)
		next.ShortProcesses = gputime.AddShort(next.ShortProcesses, short, now)
		next.GPUs = gputime.GPUsFrom(f.GPUDevices, prev.GPUs, unattributed)
		res.AccountingOnly = owned
		var ts []Transition
		ts, res.UserGPUSeconds = gputime.Account(prev, &next, active, f, hostProcs, in, gr)
		for _, p := range owned {
			d := res.UserGPUSeconds[p.User]
			d.Held += p.GPUHeldSeconds
			res.UserGPUSeconds[p.User] = d
		}
		res.Transitions = append(res.Transitions, ts...)
		res.Warnings = append(res.Warnings, gpuWithoutAccess(prev.Containers, next.Containers, active)...)
		res.Warnings = append(res.Warnings, claimedContainers(prev, seen)...)
	}
	res.Transitions = append(res.Transitions, idle.Step(prev, &next, active, f, rules.policy())...)
	if f.GPUErr == nil {
		idle.HostCPU(prev, &next, f)
	}
	if next.OtherGPUProcesses == nil {
		next.OtherGPUProcesses = []inventory.GPUProcess{}
	}
	res.Warnings = append(res.Warnings, userConflicts(prev.Containers, next.Containers, active)...)
	var flushed []Transition
	next.ShortProcesses, flushed = gputime.FlushShort(next.ShortProcesses, now, gr.Interval)
	res.Transitions = append(res.Transitions, flushed...)
	res.State = next
	return res
}

// health records a source's result for the state.
func health(prev inventory.SourceHealth, err error, now time.Time) inventory.SourceHealth {
	if err != nil {
		return inventory.SourceHealth{OK: false, Error: err.Error(), LastOK: prev.LastOK}
	}
	return inventory.SourceHealth{OK: true, LastOK: inventory.TimePtr(now)}
}

// checkpoint is the replay checkpoint to record: the stream's, once it has
// handled an event (it never moves back); before that the last one stands,
// since the stream may still be replaying from it; with none at all (a
// first run, --once) the list itself reflects everything before it began.
func checkpoint(prev *inventory.Time, snap facts.Snapshot) *inventory.Time {
	switch {
	case !snap.Checkpoint.IsZero():
		if prev == nil || snap.Checkpoint.After(prev.Time) {
			return inventory.TimePtr(snap.Checkpoint)
		}
	case prev == nil && !snap.ListStart.IsZero():
		return inventory.TimePtr(snap.ListStart.Add(-time.Second))
	}
	return prev
}

// ephemeral reports the containers born and destroyed between two scans,
// known only from the event stream: each gets its discovered and exited
// transitions, unless it was already known or already reported (a replay).
func ephemeral(prev, next inventory.State, f facts.Scan) []Transition {
	var out []Transition
	list := make([]*facts.Container, len(f.Docker.Ephemeral))
	for i := range f.Docker.Ephemeral {
		list[i] = &f.Docker.Ephemeral[i]
	}
	eph, _ := buildContainers(list, nil, f, f.Now)
	for _, k := range sortedKeys(eph) {
		if _, known := prev.Containers[k]; known {
			continue
		}
		if _, listed := next.Containers[k]; listed {
			continue
		}
		if _, done := prev.RecentlyExited[k]; done {
			continue
		}
		one := map[string]inventory.Container{k: eph[k]}
		// Stamped with Docker's own times: a container that lived while
		// the daemon was down is replayed when it was, not at this scan.
		var born, gone time.Time
		for _, c := range f.Docker.Ephemeral {
			if workload.ShortID(c.ID) == k {
				born, gone = c.Created, c.Gone
			}
		}
		for _, t := range diffContainers(nil, one, nil) {
			t.At = born
			out = append(out, t)
		}
		for _, t := range diffContainers(one, nil, nil) {
			t.At = gone
			out = append(out, t)
		}
	}
	return out
}

// recentlyExited adds this cycle's removals to the record and forgets
// those a replay can no longer bring up: reported well before the replay
// checkpoint.
func recentlyExited(prev, next inventory.State, ts []Transition, now time.Time) map[string]inventory.Time {
	out := map[string]inventory.Time{}
	var horizon time.Time
	if next.DockerEventsSince != nil {
		horizon = next.DockerEventsSince.Add(-time.Minute)
	}
	for k, t := range prev.RecentlyExited {
		if t.After(horizon) {
			out[k] = t
		}
	}
	for _, t := range ts {
		if d, ok := t.Details.(event.ContainerExitedDetails); ok {
			out[d.ContainerID] = inventory.NewTime(now)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// buildContainers classifies the listed containers. A container already
// known keeps its detected_at. It also returns the keys of the containers
// the GPU and usage steps must visit: all but the settled ones (see
// settled), which it takes over as they were.
func buildContainers(list []*facts.Container, prev map[string]inventory.Container, f facts.Scan, now time.Time) (map[string]inventory.Container, []string) {
	out := make(map[string]inventory.Container, len(list))
	var active []string
	resolve := resolver(f)
	for _, c := range list {
		key := workload.ShortID(c.ID)
		if old, ok := prev[key]; ok && f.Docker.Incremental && !f.Docker.Changed[c.ID] && c.Pid == 0 {
			// A stopped container the events did not name (the very facts
			// the last cycle had): its classification is the last cycle's.
			// Among thousands of idle containers, a cycle then classifies
			// the few that changed. The GPU and usage steps overwrite the
			// rest of the entry, and need not visit it at all when it is
			// settled. A running container is classified again every
			// cycle, and the full list of every --interval re-derives
			// everything (a user database change reaches the names then).
			out[key] = old
			if !settled(old) {
				active = append(active, key)
			}
			continue
		}
		active = append(active, key)
		in := classifyInput(*c)
		if uid, ok := f.InitUIDs[c.ID]; ok && c.Pid > 0 {
			in.InitUID = &uid
		}
		access := classify.GPUAccess(in)
		hasGPU := len(access) > 0
		signals := classify.Signals(in, resolve)
		user, src := classify.UserOf(signals)
		if signals == nil {
			signals = []inventory.UserSignal{}
		}
		for i := range signals {
			signals[i].User = textcut.Value(signals[i].User)
		}
		e := inventory.Container{
			ID: key, Name: textcut.Value(c.Name), Origin: classify.Origin(in.Labels, c.Name),
			User: textcut.Value(user), HasGPU: hasGPU, GPUDevices: cutList(classify.GPUDevices(in, hasGPU)),
			Status: textcut.Value(c.Status), Image: textcut.Value(c.Image), DetectedAt: inventory.NewTime(now),
			FullID: c.ID, UserSource: src, GPUAccess: access, Pid: c.Pid,
			UserSignals: signals, UserConflict: classify.Conflict(signals),
			GPUProcesses: []inventory.GPUProcess{},
		}
		if !c.Created.IsZero() {
			e.CreatedAt = inventory.TimePtr(c.Created)
		}
		if c.StartedAt.Year() > 1 {
			e.StartedAt = inventory.TimePtr(c.StartedAt)
		}
		if c.FinishedAt.Year() > 1 {
			e.FinishedAt = inventory.TimePtr(c.FinishedAt)
			code := c.ExitCode
			e.ExitCode = &code
		}
		if old, ok := prev[key]; ok && !old.DetectedAt.IsZero() {
			e.DetectedAt = old.DetectedAt
		}
		if old, ok := prev[key]; ok {
			e.OwnerSeconds = old.OwnerSeconds
			if ownerChanged(old.User, e.User) && e.OwnerSeconds == nil {
				// The owner changed (docker rename, a label update): the
				// seconds so far stay the old owner's.
				e.OwnerSeconds = []inventory.OwnerSeconds{{User: old.User,
					GPUAllocatedSeconds: old.GPUAllocatedSeconds, GPUHeldSeconds: old.GPUHeldSeconds, GPUBusySeconds: old.GPUBusySeconds}}
			}
		}
		if e.OwnerSeconds != nil {
			e.UserConflict = true // it has had more than one owner
		}
		out[key] = e
	}
	return out, active
}

// settled reports whether a stopped container's entry is already what the
// GPU and usage steps would make of it: no GPU process listed, no
// utilisation, not idle. A stopped container gets no GPU process and
// accrues nothing, and while the GPU source fails its last known (here:
// no) GPU use is kept, so the entry stays as it is either way.
func settled(c inventory.Container) bool {
	return c.GPUProcesses != nil && len(c.GPUProcesses) == 0 && c.GPUMemoryMB == nil && !c.GPUWithoutAccess &&
		c.GPUUtilizationPercent == nil && c.GPUIdleSince == nil && !c.GPUIdle
}

// maxListLen caps lists built from user-controlled values (gpu_devices
// from NVIDIA_VISIBLE_DEVICES).
const maxListLen = 64

func cutList(l []string) []string {
	if len(l) > maxListLen {
		l = append(l[:maxListLen:maxListLen], textcut.Marker)
	}
	for i := range l {
		l[i] = textcut.Value(l[i])
	}
	return l
}

// classifyInput turns Docker's facts into classification's input.
func classifyInput(c facts.Container) classify.Input {
	in := classify.Input{
		Name: c.Name, Labels: c.Labels, Env: c.Env, Runtime: c.Runtime,
		NvidiaRuntime: c.Runtime != "" && classify.IsNvidiaRuntime(c.Runtime, c.RuntimePath),
		DevicePaths:   c.DevicePaths, Privileged: c.Privileged,
		DeviceRequests: c.DeviceRequests, Mounts: c.Mounts,
	}
	if in.Labels == nil {
		in.Labels = map[string]string{}
	}
	return in
}

func resolver(f facts.Scan) classify.Resolver {
	return func(uid uint32) (string, bool) {
		n, ok := f.Users[uid]
		return n, ok
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// sortedKeysWhere returns, sorted, the keys of m that keep selects. Only
// those are sorted: over thousands of containers where one changed, a
// cycle sorts one key, not thousands. keep gets the key alone: ranging
// over the values would copy each one.
func sortedKeysWhere[V any](m map[string]V, keep func(k string) bool) []string {
	var keys []string
	for k := range m {
		if keep(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// sortedWhere returns, sorted, the keys that keep selects.
func sortedWhere(keys []string, keep func(k string) bool) []string {
	var out []string
	for _, k := range keys {
		if keep(k) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
