package reconcile

import (
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/classify"
	"github.com/ds01/ds01-detectord/internal/textcut"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Transition is one change to report: an event for the log and a line for
// the journal.
type Transition struct {
	EventType string
	User      string // the envelope's user
	Details   any    // one of pkg/event's *Details types
	// Message is the journal line. Only safe text goes into it (IDs,
	// Docker names, PIDs); user-controlled strings travel in Fields, whose
	// encoder escapes them.
	Message string
	Fields  []zap.Field
	// At is when it happened, when that is known better than the scan's
	// time (a container replayed from Docker's event history); zero: now.
	At time.Time

	exitedContainer string // 12-char ID, for a container_exited
}

// Warning is a condition worth one journal line when it starts.
type Warning struct {
	Message string
	Fields  []zap.Field
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
		fields := []zap.Field{zap.String("container_id", c.ID), zap.String("name", c.Name), UserField(c.User)}
		switch {
		case !seen:
			out = append(out, Transition{
				EventType: event.ContainerDiscovered, User: c.User, Message: "container discovered: " + c.ID + " " + c.Name,
				Details: event.ContainerDiscoveredDetails{
					ContainerID: c.ID, Name: c.Name, Origin: c.Origin, HasGPU: c.HasGPU, Image: c.Image,
					Status: c.Status, GPUAccess: c.GPUAccess, UserSource: c.UserSource,
				},
				Fields: append(fields, zap.String("origin", c.Origin), zap.Bool("has_gpu", c.HasGPU), zap.String("status", c.Status)),
			})
		case o.Status != c.Status:
			out = append(out, Transition{
				EventType: event.ContainerStatusChanged, User: c.User, Message: "container " + c.ID + " " + c.Name + ": " + o.Status + " -> " + c.Status,
				Details: event.ContainerStatusChangedDetails{
					ContainerID: c.ID, Name: c.Name, OldStatus: o.Status, NewStatus: c.Status,
				},
				Fields: append(fields, zap.String("old_status", o.Status), zap.String("new_status", c.Status)),
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
			EventType: event.ContainerExited, User: o.User, Message: "container removed: " + o.ID + " " + o.Name,
			Details: event.ContainerExitedDetails{ContainerID: o.ID, Name: o.Name, Origin: o.Origin, GPUSeconds: event.GPUSeconds{
				GPUAllocatedSeconds: o.GPUAllocatedSeconds, GPUHeldSeconds: o.GPUHeldSeconds, GPUBusySeconds: o.GPUBusySeconds}, GPUUUIDs: heldGPUs(o),
				ByOwner: o.OwnerSeconds},
			Fields:          []zap.Field{zap.String("container_id", o.ID), zap.String("name", o.Name), UserField(o.User)},
			exitedContainer: o.ID,
		})
	}
	return out
}

func hostDiscovered(p inventory.HostProcess) Transition {
	return Transition{
		EventType: event.HostProcessDiscovered, User: p.User, Message: "host GPU process discovered: pid " + strconv.Itoa(p.Pid),
		Details: event.HostProcessDiscoveredDetails{Pid: p.Pid, Cmdline: p.Cmdline, GPUMemoryMB: p.GPUMemoryMB, GPUUUID: p.GPUUUID, StartTime: p.StartTime},
		Fields:  []zap.Field{zap.Int("pid", p.Pid), UserField(p.User), zap.String("gpu_uuid", p.GPUUUID), zap.String("cmdline", p.Cmdline)},
	}
}

func hostExited(p inventory.HostProcess) Transition {
	return Transition{
		EventType: event.HostProcessExited, User: p.User, Message: "host GPU process exited: pid " + strconv.Itoa(p.Pid),
		Details: event.HostProcessExitedDetails{Pid: p.Pid, Cmdline: p.Cmdline, StartTime: p.StartTime, GPUSeconds: event.GPUSeconds{
			GPUAllocatedSeconds: p.GPUAllocatedSeconds, GPUHeldSeconds: p.GPUHeldSeconds, GPUBusySeconds: p.GPUBusySeconds}, GPUUUIDs: []string{p.GPUUUID}},
		Fields: []zap.Field{zap.Int("pid", p.Pid), UserField(p.User), zap.String("cmdline", p.Cmdline)},
	}
}

// gpuWithoutAccess warns once when a container starts using a GPU its
// configuration does not grant.
func gpuWithoutAccess(prev, cur map[string]inventory.Container, active []string) []Warning {
	var out []Warning
	for _, k := range sortedWhere(active, func(k string) bool { return cur[k].GPUWithoutAccess && !prev[k].GPUWithoutAccess }) {
		c := cur[k]
		out = append(out, Warning{
			Message: "container uses a GPU its configuration does not grant",
			Fields:  []zap.Field{zap.String("container_id", c.ID), zap.String("name", c.Name), UserField(c.User)},
		})
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
		out = append(out, Warning{
			Message: "GPU process's cgroup names a container it does not run in; counted as a host process of its user",
			Fields:  []zap.Field{zap.Int("pid", p.Pid), zap.Uint32("uid", p.UID), UserField(p.User), zap.String("claimed_container_id", p.ClaimedContainer)},
		})
	}
	return out
}

// userConflicts warns once when a container's owner signals start to
// disagree.
func userConflicts(prev, cur map[string]inventory.Container, active []string) []Warning {
	var out []Warning
	for _, k := range sortedWhere(active, func(k string) bool { return cur[k].UserConflict && !prev[k].UserConflict }) {
		c := cur[k]
		signals := make([]string, 0, len(c.UserSignals))
		for _, s := range c.UserSignals {
			signals = append(signals, s.Source+"="+s.User)
		}
		out = append(out, Warning{
			Message: "container's owner signals disagree: " + c.ID + " " + c.Name,
			Fields:  []zap.Field{zap.String("container_id", c.ID), UserField(c.User), zap.String("user_source", c.UserSource), zap.Strings("user_signals", signals)},
		})
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

// MaxLogValue caps user-controlled strings in log fields (a label can hold
// a megabyte).
const MaxLogValue = 256

// UserField is the user as a log field, cut to MaxLogValue bytes on a rune
// boundary. The field's encoder escapes control characters.
func UserField(u string) zap.Field {
	if len(u) > MaxLogValue {
		u = textcut.Bytes(u, MaxLogValue) + textcut.Marker
	}
	return zap.String("user", u)
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
		signals := make([]string, 0, len(c.UserSignals))
		for _, s := range c.UserSignals {
			signals = append(signals, s.Source+"="+s.User)
		}
		out = append(out, Transition{
			EventType: event.OwnerChanged, User: c.User, Message: "container owner changed: " + c.ID + " " + c.Name,
			Details: event.OwnerChangedDetails{ContainerID: c.ID, Name: c.Name, OldUser: o.User, NewUser: c.User,
				OldUserSource: o.UserSource, NewUserSource: c.UserSource, UserSignals: signals},
			Fields: []zap.Field{zap.String("container_id", c.ID), zap.String("name", c.Name), zap.String("old_user", o.User), UserField(c.User),
				zap.String("user_source", c.UserSource), zap.Strings("user_signals", signals)},
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
