package gputime

import (
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/reconcile/attribution"
	"github.com/ds01/ds01-detectord/internal/reconcile/transition"
	"github.com/ds01/ds01-detectord/internal/textcut"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Held versus used. Each cycle a workload's processes give, per GPU it
// holds memory on, the sum of their SM utilisation (capped at 100), or
// unknown. From that come its utilisation, its idle state and its GPU-second
// counters.

// Rules are the site's settings GPU-time accounting follows. Zero values
// take the defaults.
type Rules struct {
	// Attribution places the samples' processes.
	Attribution attribution.Rules
	// IdleThreshold (percent SM) and IdleAfter define a GPU held idle;
	// MaxGap caps the time one cycle's counters account for.
	IdleThreshold int
	IdleAfter     time.Duration
	MaxGap        time.Duration
	// ConfirmAfter is how long a host GPU process must have been seen
	// before it is confirmed; Interval the least time between two
	// aggregate lines of one user's short processes.
	ConfirmAfter time.Duration
	Interval     time.Duration
}

// Defaults of the idle rules.
const (
	DefaultIdleThreshold = 5                // percent SM
	DefaultIdleAfter     = 30 * time.Minute // below the threshold this long is idle
	// DefaultMaxGap caps the time one cycle accounts for: after a daemon
	// outage the counters do not claim what nobody saw.
	DefaultMaxGap = 2 * time.Minute
)

// use is one process's share of one GPU.
type use struct {
	gpu string // physical GPU UUID
	sm  *int
	mem *int64
}

// usage is a workload's GPU use this cycle.
type usage struct {
	perGPU  map[string]*int // summed SM utilisation per GPU, capped; nil: unknown
	mem     *int64
	unknown bool
}

func summarizeUse(uses []use) usage {
	var u usage
	if len(uses) == 0 {
		return u // no map: most containers hold no GPU
	}
	u.perGPU = make(map[string]*int, len(uses))
	for _, x := range uses {
		u.mem = attribution.AddMem(u.mem, x.mem)
		workload.AddUtil(u.perGPU, x.gpu, x.sm)
		u.unknown = u.unknown || x.sm == nil
	}
	return u
}

// mean is the utilisation over the GPUs held, nil when unknown or none.
func (u usage) mean() *int {
	if u.unknown || len(u.perGPU) == 0 {
		return nil
	}
	sum := 0
	for _, v := range u.perGPU {
		sum += *v
	}
	m := (sum + len(u.perGPU)/2) / len(u.perGPU)
	return &m
}

func (u usage) busy(threshold int) int {
	n := 0
	for _, v := range u.perGPU {
		if v != nil && *v >= threshold {
			n++
		}
	}
	return n
}

func (u usage) gpus() []string {
	out := make([]string, 0, len(u.perGPU))
	for g := range u.perGPU {
		out = append(out, g)
	}
	sort.Strings(out)
	return out
}

// gpuState is the part of a workload's state that usage changes.
type gpuState struct {
	Util                  *int
	IdleSince             *inventory.Time
	Idle                  bool
	Allocated, Held, Busy float64
	containerID           string
	pid                   int
	user                  string
	heldDelta, busyDelta  float64
	allocatedDelta        float64
	transitions           []transition.Transition
	usage                 usage
	threshold             int
	idleAfter             time.Duration
	dt                    float64
	now                   time.Time
	grant                 int
	running               bool
	known                 bool // the GPU source answered this cycle
	// credit is what the samples credit it this cycle; host processes
	// (hostHeld) are allocated what they held.
	credit   credit
	hostHeld bool
}

// step applies one cycle's usage to a workload's state: counters, idle
// since, and the gpu_idle / gpu_active transitions.
func (g *gpuState) step() {
	u := g.usage
	if g.running {
		g.allocatedDelta = g.dt * float64(g.grant)
	}
	if !g.known {
		g.Allocated += g.allocatedDelta
		return
	}
	g.Util = u.mean()
	g.heldDelta, g.busyDelta = g.credit.held, g.credit.busy
	if g.hostHeld {
		g.allocatedDelta = g.heldDelta
	}
	g.Allocated += g.allocatedDelta
	g.Held += g.heldDelta
	g.Busy += g.busyDelta
	switch {
	case u.unknown:
		// Unknown never makes a workload idle, nor active: nothing changes.
	case len(u.perGPU) == 0:
		g.IdleSince, g.Idle = nil, false // holds no GPU: neither idle nor active
	case u.busy(g.threshold) == 0:
		if g.IdleSince == nil {
			g.IdleSince = inventory.TimePtr(g.now)
		}
		if !g.Idle && g.now.Sub(g.IdleSince.Time) >= g.idleAfter {
			g.Idle = true
			g.transitions = append(g.transitions, g.idleTransition(event.GPUIdle))
		}
	default:
		idleSince := g.IdleSince
		g.IdleSince = nil
		if g.Idle {
			g.Idle = false
			t := g.idleTransition(event.GPUActive)
			t.Details = withIdleSince(t.Details, idleSince)
			g.transitions = append(g.transitions, t)
		}
	}
}

func withIdleSince(d any, since *inventory.Time) any {
	if v, ok := d.(event.GPUIdleDetails); ok {
		v.IdleSince = since
		return v
	}
	return d
}

func (g *gpuState) idleTransition(typ string) transition.Transition {
	return transition.Transition{
		EventType: typ, User: g.user,
		Details: event.GPUIdleDetails{
			ContainerID: g.containerID, Pid: g.pid, GPUUUIDs: g.usage.gpus(), IdleSince: g.IdleSince,
			GPUMemoryMB: g.usage.mem, ThresholdPercent: g.threshold,
		},
	}
}

// UserGPUSeconds are one user's GPU-seconds of one cycle.
type UserGPUSeconds struct{ Held, Busy float64 }

// Account updates every workload's utilisation, idle state and
// counters, and returns the transitions and the per-user deltas.
func Account(prev inventory.State, next *inventory.State, active []string, f facts.Scan, hostProcs map[string][]facts.GPUProcess, in Integrated, rules Rules) ([]transition.Transition, map[string]UserGPUSeconds) {
	dt := 0.0
	if prev.LastScan != nil {
		gap := f.Now.Sub(prev.LastScan.Time)
		dt = min(max(gap, 0), rules.maxGap()).Seconds()
	}

	var ts []transition.Transition
	deltas := map[string]UserGPUSeconds{}
	add := func(g *gpuState) {
		ts = append(ts, g.transitions...)
		if g.heldDelta > 0 || g.busyDelta > 0 {
			d := deltas[g.user]
			d.Held += g.heldDelta
			d.Busy += g.busyDelta
			deltas[g.user] = d
		}
	}
	// While Docker fails, containers are the last known ones: nothing is
	// observed of them, so nothing is accounted (the gap is not counted).
	containers := active // the others are settled: nothing changes
	if f.DockerErr != nil {
		containers = nil
	}
	// Unsorted: this runs over every active container each cycle, and only
	// the few that change state need an order (sorted below).
	type keyed struct {
		key string
		ts  []transition.Transition
	}
	var changed []keyed
	for _, k := range containers {
		c := next.Containers[k]
		old := prev.Containers[k]
		cr := in.containers[k]
		if c.Status != "running" && len(c.GPUProcesses) == 0 && f.GPUErr == nil && cr == (credit{}) {
			// A stopped container that holds no GPU: what step would
			// give, without building it (most of a large inventory).
			c.GPUUtilizationPercent, c.GPUIdleSince, c.GPUIdle = nil, nil, false
			c.GPUAllocatedSeconds, c.GPUHeldSeconds, c.GPUBusySeconds = old.GPUAllocatedSeconds, old.GPUHeldSeconds, old.GPUBusySeconds
			next.Containers[k] = c
			continue
		}
		var uses []use
		for _, p := range c.GPUProcesses {
			uses = append(uses, use{p.GPUUUID, p.SMUtilPercent, p.GPUMemoryMB})
		}
		g := gpuState{
			Util: old.GPUUtilizationPercent, IdleSince: old.GPUIdleSince, Idle: old.GPUIdle,
			Allocated: old.GPUAllocatedSeconds, Held: old.GPUHeldSeconds, Busy: old.GPUBusySeconds,
			containerID: c.ID, user: c.User,
			usage: summarizeUse(uses), threshold: rules.threshold(), idleAfter: rules.idleAfter(), dt: dt, now: f.Now,
			grant: c.GrantedGPUs(next.GPUs), running: c.Status == "running", known: f.GPUErr == nil, credit: cr,
		}
		g.step()
		c.GPUUtilizationPercent, c.GPUIdleSince, c.GPUIdle = g.Util, g.IdleSince, g.Idle
		c.GPUAllocatedSeconds, c.GPUHeldSeconds, c.GPUBusySeconds = g.Allocated, g.Held, g.Busy
		if c.OwnerSeconds != nil && (g.allocatedDelta != 0 || g.heldDelta != 0 || g.busyDelta != 0) {
			c.OwnerSeconds = chargeOwner(c.OwnerSeconds, c.User, g.allocatedDelta, g.heldDelta, g.busyDelta)
		}
		next.Containers[k] = c
		if len(g.transitions) > 0 {
			changed = append(changed, keyed{k, g.transitions})
			g.transitions = nil
		}
		add(&g)
	}
	sort.Slice(changed, func(i, j int) bool { return changed[i].key < changed[j].key })
	for _, c := range changed {
		ts = append(ts, c.ts...)
	}
	if f.GPUErr != nil {
		return ts, deltas // host processes are kept as they were
	}
	for _, m := range []map[string]inventory.HostProcess{next.HostProcesses, next.PendingProcesses} {
		for _, k := range sortedKeys(m) {
			p := m[k]
			old, ok := prev.HostProcesses[k]
			if !ok || old.StartTime != p.StartTime {
				old = prev.PendingProcesses[k]
				if old.StartTime != p.StartTime {
					old = inventory.HostProcess{}
				}
			}
			u := summarizeUse(usesOf(hostProcs[k]))
			var cr credit
			if h := in.hosts[hostKey(p.Pid, p.StartTime)]; h != nil && !h.charged {
				cr, h.charged = h.credit, true
			}
			g := gpuState{
				Util: old.GPUUtilizationPercent, IdleSince: old.GPUIdleSince, Idle: old.GPUIdle,
				Allocated: old.GPUAllocatedSeconds, Held: old.GPUHeldSeconds, Busy: old.GPUBusySeconds,
				pid: p.Pid, user: p.User,
				usage: u, threshold: rules.threshold(), idleAfter: rules.idleAfter(), dt: dt, now: f.Now,
				grant: len(u.perGPU), running: true, known: true, credit: cr, hostHeld: true,
			}
			g.step()
			p.SMUtilPercent = g.Util
			p.GPUUtilizationPercent, p.GPUIdleSince, p.GPUIdle = g.Util, g.IdleSince, g.Idle
			p.GPUAllocatedSeconds, p.GPUHeldSeconds, p.GPUBusySeconds = g.Allocated, g.Held, g.Busy
			m[k] = p
			add(&g)
		}
	}
	// Processes that ended between two scans: their seconds are their
	// owners' all the same.
	for _, hk := range sortedKeys(in.hosts) {
		if h := in.hosts[hk]; !h.charged || h.ended {
			add(&gpuState{user: h.hp.User, heldDelta: h.held, busyDelta: h.busy})
		}
	}
	return ts, deltas
}

// GPUsFrom turns the GPU source's devices into the state's gpus map,
// carrying each GPU's unattributed seconds over and adding this cycle's.
func GPUsFrom(devs []facts.GPUDevice, prev map[string]inventory.GPU, unattributed map[string]float64) map[string]inventory.GPU {
	out := make(map[string]inventory.GPU, len(devs))
	for _, d := range devs {
		out[d.UUID] = inventory.GPU{
			Index: d.Index, Name: textcut.Value(d.Name), MemoryTotalMB: d.MemoryTotalMiB, MemoryUsedMB: d.MemoryUsedMiB,
			UtilizationPercent: d.Util, MIGMode: d.MIG, AccountingMode: d.Accounting,
			UnattributedSeconds: prev[d.UUID].UnattributedSeconds + unattributed[d.UUID],
		}
	}
	return out
}

func (r Rules) threshold() int {
	if r.IdleThreshold <= 0 {
		return DefaultIdleThreshold
	}
	return r.IdleThreshold
}

func (r Rules) idleAfter() time.Duration {
	if r.IdleAfter <= 0 {
		return DefaultIdleAfter
	}
	return r.IdleAfter
}

func (r Rules) maxGap() time.Duration {
	if r.MaxGap <= 0 {
		return DefaultMaxGap
	}
	return r.MaxGap
}

// Defaults of the sampler's rules.
const (
	DefaultConfirmAfter = 5 * time.Second
	DefaultInterval     = 30 * time.Second
)

// WithDefaults is r with its zero values replaced by the defaults.
func (r Rules) WithDefaults() Rules {
	r.IdleThreshold, r.IdleAfter, r.MaxGap = r.threshold(), r.idleAfter(), r.maxGap()
	r.ConfirmAfter, r.Interval = r.confirmAfter(), r.interval()
	return r
}

func (r Rules) confirmAfter() time.Duration {
	if r.ConfirmAfter <= 0 {
		return DefaultConfirmAfter
	}
	return r.ConfirmAfter
}

func (r Rules) interval() time.Duration {
	if r.Interval <= 0 {
		return DefaultInterval
	}
	return r.Interval
}

// chargeOwner adds this scan's seconds to user's share, on a copy: the
// slice belongs to the previous state too.
func chargeOwner(shares []inventory.OwnerSeconds, user string, alloc, held, busy float64) []inventory.OwnerSeconds {
	out := make([]inventory.OwnerSeconds, len(shares), len(shares)+1)
	copy(out, shares)
	i := 0
	for i < len(out) && out[i].User != user {
		i++
	}
	if i == len(out) {
		out = append(out, inventory.OwnerSeconds{User: user})
	}
	out[i].GPUAllocatedSeconds += alloc
	out[i].GPUHeldSeconds += held
	out[i].GPUBusySeconds += busy
	return out
}

// usesOf is what a host process's GPU processes use.
func usesOf(ps []facts.GPUProcess) []use {
	var out []use
	for _, p := range ps {
		out = append(out, use{p.GPUUUID, p.SMUtil, p.MemoryMiB})
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
