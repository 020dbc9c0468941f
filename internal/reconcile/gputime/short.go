package gputime

import (
	"slices"
	"time"

	"github.com/ds01/ds01-detectord/internal/reconcile/transition"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Short processes: a host GPU process that ends before it is confirmed
// gets no events of its own (a user running many short processes must not
// flood the log), but its GPU time is its owner's all the same. Each user's
// are summed in the state (_short_processes) and reach the event log as one
// detection.short_gpu_processes line once the oldest of them is --interval
// old: at most one line per user per --interval.

// maxUUIDs caps the GPUs one user's aggregate lists.
const maxUUIDs = 64

// AddShort adds ended unconfirmed processes to their users' aggregates. m
// belongs to the previous state: it is copied before it changes.
func AddShort(m map[string]inventory.ShortProcesses, short []inventory.HostProcess, now time.Time) map[string]inventory.ShortProcesses {
	if len(short) == 0 {
		return m
	}
	out := make(map[string]inventory.ShortProcesses, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	for _, p := range short {
		a, ok := out[p.User]
		if !ok {
			a.Since = inventory.NewTime(now)
			if p.FirstSeen != nil {
				a.Since = *p.FirstSeen
			}
		} else {
			a.GPUUUIDs = slices.Clone(a.GPUUUIDs)
		}
		a.Count++
		a.GPUAllocatedSeconds += p.GPUAllocatedSeconds
		a.GPUHeldSeconds += p.GPUHeldSeconds
		a.GPUBusySeconds += p.GPUBusySeconds
		if p.GPUUUID != "" && !slices.Contains(a.GPUUUIDs, p.GPUUUID) && len(a.GPUUUIDs) < maxUUIDs {
			a.GPUUUIDs = append(a.GPUUUIDs, p.GPUUUID)
			slices.Sort(a.GPUUUIDs)
		}
		out[p.User] = a
	}
	return out
}

// FlushShort reports the aggregates whose oldest process is interval old,
// and keeps the others.
func FlushShort(m map[string]inventory.ShortProcesses, now time.Time, interval time.Duration) (map[string]inventory.ShortProcesses, []transition.Transition) {
	var due []string
	for u, a := range m {
		if now.Sub(a.Since.Time) >= interval {
			due = append(due, u)
		}
	}
	if len(due) == 0 {
		return m, nil
	}
	slices.Sort(due)
	out := map[string]inventory.ShortProcesses{}
	for u, a := range m {
		out[u] = a
	}
	var ts []transition.Transition
	for _, u := range due {
		a := out[u]
		delete(out, u)
		uuids := a.GPUUUIDs
		if uuids == nil {
			uuids = []string{}
		}
		since := a.Since
		ts = append(ts, transition.Transition{
			EventType: event.ShortProcesses, User: u,
			Details: event.ShortProcessesDetails{Count: a.Count, Since: &since, Until: inventory.TimePtr(now), GPUUUIDs: uuids,
				GPUSeconds: event.GPUSeconds{GPUAllocatedSeconds: a.GPUAllocatedSeconds, GPUHeldSeconds: a.GPUHeldSeconds, GPUBusySeconds: a.GPUBusySeconds}},
		})
	}
	if len(out) == 0 {
		out = nil
	}
	return out, ts
}
