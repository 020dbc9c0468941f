package gputime

import (
	"slices"
	"strconv"
	"time"

	"github.com/ds01/ds01-detectord/internal/reconcile/transition"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// ConfirmHosts confirms a host process once it has been seen for
// confirmAfter: the time between its first and its latest sighting by the
// GPU sampler (or by the scans, without one), never a count of scans.
// Identity is (pid, start time): a reused PID is a new process.
// detected_at is the first sighting. It returns the confirmed and pending
// maps, the transitions, and the processes that ended before they were
// confirmed (their counters complete), which the caller charges to their
// owners in aggregate. in holds the samples' sightings and credits: a
// process that ends between two scans gets the credit of its last samples
// in its exit event.
func ConfirmHosts(seen, oldConfirmed, oldPending map[string]inventory.HostProcess, now time.Time, in Integrated, confirmAfter time.Duration) (confirmed, pending map[string]inventory.HostProcess, ts []transition.Transition, short []inventory.HostProcess) {
	confirmed, pending = map[string]inventory.HostProcess{}, map[string]inventory.HostProcess{}
	at := in.last
	if at.IsZero() {
		at = now
	}
	for _, k := range sortedKeys(seen) {
		p := seen[k]
		if old, ok := oldConfirmed[k]; ok && old.StartTime == p.StartTime {
			p.DetectedAt, p.FirstSeen = old.DetectedAt, old.FirstSeen
			confirmed[k] = p
			continue
		}
		first := at
		if h := in.hosts[hostKey(p.Pid, p.StartTime)]; h != nil {
			first = h.first
		}
		legacy := false
		if old, ok := oldPending[k]; ok && old.StartTime == p.StartTime {
			if old.FirstSeen != nil && old.FirstSeen.Before(first) {
				first = old.FirstSeen.Time
			}
			// The Python scanner's pending entry (no first sighting
			// recorded): seen at its last scan, and confirmed on this
			// second sighting, as its rule had it.
			legacy = old.FirstSeen == nil
		}
		p.FirstSeen = inventory.TimePtr(first)
		if legacy || at.Sub(first) >= confirmAfter {
			p.DetectedAt = p.FirstSeen
			confirmed[k] = p
			ts = append(ts, hostDiscovered(p))
			continue
		}
		p.DetectedAt = nil
		pending[k] = p
	}
	gone := func(k string, start uint64) bool {
		cur, ok := seen[k]
		return !ok || cur.StartTime != start
	}
	for _, k := range sortedKeys(oldConfirmed) {
		old := oldConfirmed[k]
		if !gone(k, old.StartTime) {
			continue
		}
		if h := in.hosts[hostKey(old.Pid, old.StartTime)]; h != nil {
			old.GPUHeldSeconds += h.held
			old.GPUBusySeconds += h.busy
			old.GPUAllocatedSeconds += h.held
			h.charged, h.ended = true, true
		}
		ts = append(ts, hostExited(old))
	}
	// Processes that ended unconfirmed: those pending at the last scan, and
	// those the sampler saw only between two scans.
	ended := map[string]inventory.HostProcess{}
	for k, old := range oldPending {
		if gone(k, old.StartTime) {
			ended[hostKey(old.Pid, old.StartTime)] = old
		}
	}
	for hk, h := range in.hosts {
		if h.charged {
			continue
		}
		k := strconv.Itoa(h.hp.Pid)
		if _, done := oldConfirmed[k]; done && oldConfirmed[k].StartTime == h.hp.StartTime {
			continue
		}
		if !gone(k, h.hp.StartTime) {
			continue
		}
		p, ok := ended[hk]
		if !ok {
			p = h.hp
			p.FirstSeen = inventory.TimePtr(h.first)
		}
		p.GPUHeldSeconds += h.held
		p.GPUBusySeconds += h.busy
		p.GPUAllocatedSeconds += h.held
		if !slices.Contains(h.gpus, p.GPUUUID) {
			p.GPUUUID = h.gpus[0]
		}
		ended[hk] = p
		if p.FirstSeen != nil && h.last.Sub(p.FirstSeen.Time) >= confirmAfter {
			// Long enough to confirm, but it lived between two scans:
			// reported whole, like a container created and removed
			// between scans.
			p.DetectedAt = p.FirstSeen
			ts = append(ts, hostDiscovered(p), hostExited(p))
			delete(ended, hk)
		}
	}
	for _, hk := range sortedKeys(ended) {
		short = append(short, ended[hk])
	}
	return confirmed, pending, ts, short
}

func hostDiscovered(p inventory.HostProcess) transition.Transition {
	return transition.Transition{
		EventType: event.HostProcessDiscovered, User: p.User,
		Details: event.HostProcessDiscoveredDetails{Pid: p.Pid, Cmdline: p.Cmdline, GPUMemoryMB: p.GPUMemoryMB, GPUUUID: p.GPUUUID, StartTime: p.StartTime},
	}
}

func hostExited(p inventory.HostProcess) transition.Transition {
	return transition.Transition{
		EventType: event.HostProcessExited, User: p.User,
		Details: event.HostProcessExitedDetails{Pid: p.Pid, Cmdline: p.Cmdline, StartTime: p.StartTime, GPUSeconds: event.GPUSeconds{
			GPUAllocatedSeconds: p.GPUAllocatedSeconds, GPUHeldSeconds: p.GPUHeldSeconds, GPUBusySeconds: p.GPUBusySeconds}, GPUUUIDs: []string{p.GPUUUID}},
	}
}
