package reconcile

import (
	"slices"

	"github.com/ds01/ds01-detectord/internal/classify"
	"github.com/ds01/ds01-detectord/internal/reconcile/transition"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Transition is one change to report, as data (internal/reconcile/transition).
type Transition = transition.Transition

// Kinds of warnings.
const (
	// WarnGPUWithoutAccess: a container uses a GPU its configuration does
	// not grant (ContainerID, Name, User).
	WarnGPUWithoutAccess = "gpu_without_access"
	// WarnClaimedContainer: a GPU process's cgroup names a container it
	// does not run in (Pid, UID, User, ClaimedContainer).
	WarnClaimedContainer = "claimed_container"
	// WarnUserConflict: a container's owner signals disagree
	// (ContainerID, Name, User, UserSource, UserSignals).
	WarnUserConflict = "user_conflict"
)

// Warning is a condition worth one journal line when it starts, as data:
// its kind and the values that kind names.
type Warning struct {
	Kind                    string
	ContainerID, Name, User string
	Pid                     int
	UID                     uint32
	ClaimedContainer        string
	UserSource              string
	UserSignals             []string // source=user
}

// diffContainers lists the transitions from old to cur, in the order the
// Python scanner used: discovered and status changes, then removals.
//
// candidates are the keys of cur that may have changed (nil: all of them):
// a container reconcile took over settled, unchanged, is not one.
func diffContainers(old, cur map[string]inventory.Container, candidates []string) []Transition {
	var out []Transition
	fresh := 0 // keys of cur that old lacks
	pick := func(k string) bool {
		o, seen := old[k]
		if !seen {
			fresh++
		}
		return !seen || o.Status != cur[k].Status // else the common case: nothing to report
	}
	var changed []string
	if candidates == nil {
		changed = sortedKeysWhere(cur, pick)
	} else {
		changed = sortedWhere(candidates, pick)
	}
	for _, k := range changed {
		c := cur[k]
		o, seen := old[k]
		switch {
		case !seen:
			out = append(out, Transition{
				EventType: event.ContainerDiscovered, User: c.User,
				Details: event.ContainerDiscoveredDetails{
					ContainerID: c.ID, Name: c.Name, Origin: c.Origin, HasGPU: c.HasGPU, Image: c.Image,
					Status: c.Status, GPUAccess: c.GPUAccess, UserSource: c.UserSource,
				},
			})
		case o.Status != c.Status:
			out = append(out, Transition{
				EventType: event.ContainerStatusChanged, User: c.User,
				Details: event.ContainerStatusChangedDetails{
					ContainerID: c.ID, Name: c.Name, OldStatus: o.Status, NewStatus: c.Status,
				},
			})
		}
	}
	var gone []string
	if len(cur)-fresh != len(old) { // else every old key is in cur
		gone = sortedKeysWhere(old, func(k string) bool { _, ok := cur[k]; return !ok })
	}
	for _, k := range gone {
		o := old[k]
		out = append(out, Transition{
			EventType: event.ContainerExited, User: o.User,
			Details: event.ContainerExitedDetails{ContainerID: o.ID, Name: o.Name, Origin: o.Origin, GPUSeconds: event.GPUSeconds{
				GPUAllocatedSeconds: o.GPUAllocatedSeconds, GPUHeldSeconds: o.GPUHeldSeconds, GPUBusySeconds: o.GPUBusySeconds}, GPUUUIDs: heldGPUs(o),
				ByOwner: o.OwnerSeconds},
		})
	}
	return out
}

// gpuWithoutAccess warns once when a container starts using a GPU its
// configuration does not grant.
func gpuWithoutAccess(prev, cur map[string]inventory.Container, active []string) []Warning {
	var out []Warning
	for _, k := range sortedWhere(active, func(k string) bool { return cur[k].GPUWithoutAccess && !prev[k].GPUWithoutAccess }) {
		c := cur[k]
		out = append(out, Warning{Kind: WarnGPUWithoutAccess, ContainerID: c.ID, Name: c.Name, User: c.User})
	}
	return out
}

// claimedContainers warns once about each newly seen process whose cgroup
// names a container it does not run in.
func claimedContainers(prev inventory.State, seen map[string]inventory.HostProcess) []Warning {
	var out []Warning
	for _, k := range sortedKeys(seen) {
		p := seen[k]
		if p.ClaimedContainer == "" {
			continue
		}
		if old, ok := prev.PendingProcesses[k]; ok && old.StartTime == p.StartTime && old.ClaimedContainer == p.ClaimedContainer {
			continue
		}
		if old, ok := prev.HostProcesses[k]; ok && old.StartTime == p.StartTime && old.ClaimedContainer == p.ClaimedContainer {
			continue
		}
		out = append(out, Warning{Kind: WarnClaimedContainer, Pid: p.Pid, UID: p.UID, User: p.User, ClaimedContainer: p.ClaimedContainer})
	}
	return out
}

// userConflicts warns once when a container's owner signals start to
// disagree.
func userConflicts(prev, cur map[string]inventory.Container, active []string) []Warning {
	var out []Warning
	for _, k := range sortedWhere(active, func(k string) bool { return cur[k].UserConflict && !prev[k].UserConflict }) {
		c := cur[k]
		out = append(out, Warning{Kind: WarnUserConflict, ContainerID: c.ID, Name: c.Name, User: c.User,
			UserSource: c.UserSource, UserSignals: signalList(c.UserSignals)})
	}
	return out
}

// heldGPUs are the GPUs a container has processes on, sorted.
func heldGPUs(c inventory.Container) []string {
	var out []string
	for _, p := range c.GPUProcesses {
		if !slices.Contains(out, p.GPUUUID) {
			out = append(out, p.GPUUUID)
		}
	}
	slices.Sort(out)
	return out
}

// ownerChanges logs one detection.owner_changed per live container whose
// owner changed since the last scan (docker rename from one owner's name
// to another's, a label update). The GPU-seconds before it stay the old
// owner's (Container.OwnerSeconds).
func ownerChanges(prev, cur map[string]inventory.Container, active []string) []Transition {
	var out []Transition
	for _, k := range sortedWhere(active, func(k string) bool {
		o, ok := prev[k]
		return ok && ownerChanged(o.User, cur[k].User)
	}) {
		o, c := prev[k], cur[k]
		out = append(out, Transition{
			EventType: event.OwnerChanged, User: c.User,
			Details: event.OwnerChangedDetails{ContainerID: c.ID, Name: c.Name, OldUser: o.User, NewUser: c.User,
				OldUserSource: o.UserSource, NewUserSource: c.UserSource, UserSignals: signalList(c.UserSignals)},
		})
	}
	return out
}

// ownerChanged says whether a container's owner changed from old to cur.
// An owner becoming known (unknown before its init process could be read)
// or no longer known (Docker's facts incomplete) is no change of hands.
func ownerChanged(old, cur string) bool {
	return old != cur && old != classify.Unknown && cur != classify.Unknown && old != "" && cur != ""
}

// signalList is a container's owner signals as source=user.
func signalList(signals []inventory.UserSignal) []string {
	out := make([]string, 0, len(signals))
	for _, s := range signals {
		out = append(out, s.Source+"="+s.User)
	}
	return out
}
