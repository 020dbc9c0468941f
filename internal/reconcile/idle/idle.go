// Package idle gives the idle verdict of running containers from their
// CPU, network and GPU activity (detection.idle, detection.active), and
// the CPU percent of host GPU processes.
package idle

import (
	"math"
	"sort"
	"time"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/policy"
	"github.com/ds01/ds01-detectord/internal/reconcile/transition"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// The idle verdict. At each reconciliation scan (facts.Scan.Activity set) a
// running container's activity is read from its cgroup and network
// namespace; with the reading before it gives its CPU percent and its
// network bytes over the interval. It is idle when every signal it has is
// under its threshold, for the policy's idle_detection_window consecutive
// scans past the grace period after its start:
//
//   - GPU: its GPU utilisation, only when it holds a GPU (has processes on
//     one); unknown utilisation leaves the verdict as it was;
//   - CPU: cpu_percent; unknown (the first reading) leaves it as it was;
//   - network: net_bytes_per_interval; in the host's network namespace it
//     cannot be measured and is left out.
//
// The verdict is given once (detection.idle, idle_since) and ends once
// (detection.active) when a signal goes over its threshold or the
// container restarts. A container that stops leaves it without an event:
// its status change says it.

// Step updates the activity and the verdict of the active containers.
func Step(prev inventory.State, next *inventory.State, active []string, f facts.Scan, pol *policy.Policy) []transition.Transition {
	if f.DockerErr != nil {
		return nil // the last known containers, as they were
	}
	type keyed struct {
		key string
		t   transition.Transition
	}
	var changed []keyed
	for _, k := range active {
		c := next.Containers[k]
		if c.Status != "running" || c.Pid <= 0 {
			continue // built afresh (stopping is an event, so it was inspected again): no activity
		}
		old, had := prev.Containers[k]
		if !had || old.Pid != c.Pid {
			old = inventory.Container{}
		}
		if f.Activity == nil { // an event scan: the last reading stands
			carryActivity(&c, old)
			next.Containers[k] = c
			continue
		}
		s, read := f.Activity[c.FullID]
		if read {
			readActivity(&c, old, s)
		} else {
			// Not readable this scan (its init just exited, say): the last
			// reading stays the base of the next rates, and nothing was
			// measured over this interval.
			carryActivity(&c, old)
			c.CPUPercent, c.NetBytesPerInterval = nil, nil
		}
		if t, ok := verdict(&c, old, pol.For(c.User, c.Origin), f.Now, read); ok {
			changed = append(changed, keyed{k, t})
		}
		next.Containers[k] = c
	}
	sort.Slice(changed, func(i, j int) bool { return changed[i].key < changed[j].key })
	out := make([]transition.Transition, 0, len(changed))
	for _, c := range changed {
		out = append(out, c.t)
	}
	return out
}

// carryActivity copies the last reading and verdict into a rebuilt entry.
func carryActivity(c *inventory.Container, old inventory.Container) {
	c.CPUPercent, c.CPUUsageSeconds, c.MemoryBytes = old.CPUPercent, old.CPUUsageSeconds, old.MemoryBytes
	c.NetRxBytes, c.NetTxBytes, c.NetBytesPerInterval = old.NetRxBytes, old.NetTxBytes, old.NetBytesPerInterval
	c.BlkioReadBytes, c.BlkioWriteBytes, c.ActivityAt = old.BlkioReadBytes, old.BlkioWriteBytes, old.ActivityAt
	c.IdleSince, c.IdleDeadline, c.IdleScans, c.IdleSignals, c.IdlePolicy = old.IdleSince, old.IdleDeadline, old.IdleScans, old.IdleSignals, old.IdlePolicy
}

// readActivity fills a container's activity from a sample, with rates
// against the last reading of the same init process.
func readActivity(c *inventory.Container, old inventory.Container, s facts.Activity) {
	c.ActivityAt = s.At.UnixNano()
	c.MemoryBytes, c.BlkioReadBytes, c.BlkioWriteBytes = s.MemoryBytes, s.ReadBytes, s.WriteBytes
	c.NetRxBytes, c.NetTxBytes = s.RxBytes, s.TxBytes
	// Rates over the interval since the last reading: on the reader's
	// clock (s.At, with its monotonic reading lost to the state), so a
	// step of the wall clock between two scans makes one interval unknown.
	dt := time.Duration(c.ActivityAt - old.ActivityAt).Seconds()
	prior := old.ActivityAt != 0 && dt > 0
	if s.CPUNanos != nil {
		v := float64(*s.CPUNanos) / 1e9
		c.CPUUsageSeconds = &v
		if prior && old.CPUUsageSeconds != nil && v >= *old.CPUUsageSeconds {
			pct := math.Round((v-*old.CPUUsageSeconds)/dt*100*100) / 100
			c.CPUPercent = &pct
		}
	}
	if s.RxBytes != nil && s.TxBytes != nil && prior && old.NetRxBytes != nil && old.NetTxBytes != nil &&
		*s.RxBytes >= *old.NetRxBytes && *s.TxBytes >= *old.NetTxBytes {
		d := (*s.RxBytes - *old.NetRxBytes) + (*s.TxBytes - *old.NetTxBytes)
		c.NetBytesPerInterval = &d
	}
}

// verdict takes the idle verdict of a running container and returns its
// transition, if any. read is false when its activity could not be read
// this scan (unknown: the verdict stays as it was).
func verdict(c *inventory.Container, old inventory.Container, a policy.Applied, now time.Time, read bool) (transition.Transition, bool) {
	rec := a.Record
	c.IdlePolicy = &rec
	sig := &inventory.IdleSignals{
		CPU:     signal(c.CPUPercent, a.CPUPercent),
		Network: signal(toFloat(c.NetBytesPerInterval), a.NetBytes),
	}
	if len(c.GPUProcesses) > 0 {
		var util *float64
		if c.GPUUtilizationPercent != nil {
			v := float64(*c.GPUUtilizationPercent)
			util = &v
		}
		g := signal(util, a.GPUPercent)
		sig.GPU = &g
	}
	c.IdleSignals = sig
	c.IdleSince, c.IdleScans = old.IdleSince, old.IdleScans
	wasIdle := old.IdleSince != nil
	inGrace := c.StartedAt == nil || now.Sub(c.StartedAt.Time) < a.Grace
	unknown := !read || sig.CPU.Value == nil || (sig.GPU != nil && sig.GPU.Value == nil)
	quiet := sig.CPU.Idle && (sig.GPU == nil || sig.GPU.Idle) && (sig.Network.Value == nil || sig.Network.Idle)
	var t transition.Transition
	emit := false
	switch {
	case inGrace:
		c.IdleScans = 0
		if wasIdle { // restarted
			c.IdleSince = nil
			t, emit = idleTransition(event.Active, c, old.IdleSince), true
		}
	case unknown:
		// Nothing is known this scan: the verdict stays as it was.
	case quiet:
		c.IdleScans = old.IdleScans + 1
		if !wasIdle && c.IdleScans >= a.Window {
			c.IdleSince = inventory.TimePtr(now)
			c.IdleDeadline = deadline(c.IdleSince, a.Timeout)
			t, emit = idleTransition(event.Idle, c, c.IdleSince), true
		}
	default:
		c.IdleScans = 0
		if wasIdle {
			c.IdleSince = nil
			t, emit = idleTransition(event.Active, c, old.IdleSince), true
		}
	}
	// The deadline follows the policy in force (a reload changes it).
	c.IdleDeadline = deadline(c.IdleSince, a.Timeout)
	return t, emit
}

func deadline(since *inventory.Time, timeout *time.Duration) *inventory.Time {
	if since == nil || timeout == nil {
		return nil
	}
	return inventory.TimePtr(since.Add(*timeout))
}

func signal(v *float64, threshold float64) inventory.IdleSignal {
	return inventory.IdleSignal{Value: v, Threshold: threshold, Idle: v != nil && *v < threshold}
}

func toFloat(v *int64) *float64 {
	if v == nil {
		return nil
	}
	f := float64(*v)
	return &f
}

func idleTransition(typ string, c *inventory.Container, since *inventory.Time) transition.Transition {
	return transition.Transition{
		EventType: typ, User: c.User,
		Details: event.IdleDetails{ContainerID: c.ID, Name: c.Name, Origin: c.Origin, IdleSince: since,
			IdleDeadline: c.IdleDeadline, Signals: c.IdleSignals, Policy: c.IdlePolicy},
	}
}

// clockTicks is USER_HZ, 100 on every Linux architecture the daemon
// builds for.
const clockTicks = 100

// HostCPU gives each host GPU process its CPU percent over the interval
// since the last reading of the same process (PID and start time).
func HostCPU(prev inventory.State, next *inventory.State, f facts.Scan) {
	for _, m := range []map[string]inventory.HostProcess{next.HostProcesses, next.PendingProcesses} {
		for k, p := range m {
			old, ok := prev.HostProcesses[k]
			if !ok || old.StartTime != p.StartTime {
				old = prev.PendingProcesses[k]
			}
			if old.StartTime != p.StartTime {
				old = inventory.HostProcess{}
			}
			if f.ProcCPU == nil { // an event scan: the last reading stands
				p.CPUPercent, p.CPUTicks, p.CPUAt = old.CPUPercent, old.CPUTicks, old.CPUAt
				m[k] = p
				continue
			}
			p.CPUPercent, p.CPUTicks, p.CPUAt = nil, 0, 0
			if c, ok := f.ProcCPU[p.Pid]; ok && c.StartTime == p.StartTime {
				p.CPUTicks, p.CPUAt = c.Ticks, c.At.UnixNano()
				dt := time.Duration(p.CPUAt - old.CPUAt).Seconds()
				if old.CPUAt != 0 && dt > 0 && c.Ticks >= old.CPUTicks {
					pct := math.Round(float64(c.Ticks-old.CPUTicks)/clockTicks/dt*100*100) / 100
					p.CPUPercent = &pct
				}
			}
			m[k] = p
		}
	}
}
