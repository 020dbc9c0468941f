package cycle

import (
	"strconv"

	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/internal/textcut"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// The journal: one line per transition and per warning, made here from
// reconcile's data. Only safe text goes into a message (IDs, Docker
// names, PIDs, statuses); user-controlled strings travel in fields, whose
// encoder escapes them.

// maxLogValue caps user-controlled strings in log fields (a label can hold
// a megabyte).
const maxLogValue = 256

// userField is the user as a log field, cut to maxLogValue bytes on a rune
// boundary. The field's encoder escapes control characters.
func userField(u string) zap.Field {
	if len(u) > maxLogValue {
		u = textcut.Bytes(u, maxLogValue) + textcut.Marker
	}
	return zap.String("user", u)
}

// transitionLine is a transition's journal message and fields (the caller
// adds event_type). st is the state the transition led to: a GPU idle
// verdict's container is named from it.
func transitionLine(t reconcile.Transition, st inventory.State) (string, []zap.Field) {
	user := userField(t.User)
	container := func(id, name string) []zap.Field {
		return []zap.Field{zap.String("container_id", id), zap.String("name", name), user}
	}
	switch d := t.Details.(type) {
	case event.ContainerDiscoveredDetails:
		return "container discovered: " + d.ContainerID + " " + d.Name,
			append(container(d.ContainerID, d.Name), zap.String("origin", d.Origin), zap.Bool("has_gpu", d.HasGPU), zap.String("status", d.Status))
	case event.ContainerStatusChangedDetails:
		return "container " + d.ContainerID + " " + d.Name + ": " + d.OldStatus + " -> " + d.NewStatus,
			append(container(d.ContainerID, d.Name), zap.String("old_status", d.OldStatus), zap.String("new_status", d.NewStatus))
	case event.ContainerExitedDetails:
		return "container removed: " + d.ContainerID + " " + d.Name, container(d.ContainerID, d.Name)
	case event.HostProcessDiscoveredDetails:
		return "host GPU process discovered: pid " + strconv.Itoa(d.Pid),
			[]zap.Field{zap.Int("pid", d.Pid), user, zap.String("gpu_uuid", d.GPUUUID), zap.String("cmdline", d.Cmdline)}
	case event.HostProcessExitedDetails:
		return "host GPU process exited: pid " + strconv.Itoa(d.Pid), []zap.Field{zap.Int("pid", d.Pid), user, zap.String("cmdline", d.Cmdline)}
	case event.OwnerChangedDetails:
		return "container owner changed: " + d.ContainerID + " " + d.Name,
			[]zap.Field{zap.String("container_id", d.ContainerID), zap.String("name", d.Name), zap.String("old_user", d.OldUser), user,
				zap.String("user_source", d.NewUserSource), zap.Strings("user_signals", d.UserSignals)}
	case event.IdleDetails:
		msg := "container idle: "
		if t.EventType == event.Active {
			msg = "container active again: "
		}
		fields := container(d.ContainerID, d.Name)
		if d.Policy != nil {
			fields = append(fields, zap.String("group", d.Policy.Group))
		}
		if s := d.Signals; s != nil {
			fields = append(fields, zap.Float64p("cpu_percent", s.CPU.Value), zap.Float64p("net_bytes_per_interval", s.Network.Value))
			if s.GPU != nil {
				fields = append(fields, zap.Float64p("gpu_percent", s.GPU.Value))
			}
		}
		if d.IdleDeadline != nil {
			fields = append(fields, zap.Time("idle_deadline", d.IdleDeadline.Time))
		}
		return msg + d.ContainerID + " " + d.Name, fields
	case event.GPUIdleDetails:
		msg := "GPU held idle: "
		if t.EventType == event.GPUActive {
			msg = "GPU active again: "
		}
		var fields []zap.Field
		if d.ContainerID != "" {
			name := st.Containers[d.ContainerID].Name
			msg += "container " + d.ContainerID + " " + name
			fields = container(d.ContainerID, name)
		} else {
			msg += "pid " + strconv.Itoa(d.Pid)
			fields = []zap.Field{zap.Int("pid", d.Pid), user}
		}
		return msg, append(fields, zap.Strings("gpu_uuids", d.GPUUUIDs), zap.Int("threshold_percent", d.ThresholdPercent))
	case event.ShortProcessesDetails:
		return "short-lived host GPU processes: " + strconv.Itoa(d.Count),
			[]zap.Field{user, zap.Int("count", d.Count), zap.Float64("gpu_held_seconds", d.GPUHeldSeconds),
				zap.Float64("gpu_busy_seconds", d.GPUBusySeconds), zap.Strings("gpu_uuids", d.GPUUUIDs)}
	}
	return t.EventType, []zap.Field{user}
}

// warningLine is a warning's journal message and fields.
func warningLine(w reconcile.Warning) (string, []zap.Field) {
	switch w.Kind {
	case reconcile.WarnGPUWithoutAccess:
		return "container uses a GPU its configuration does not grant",
			[]zap.Field{zap.String("container_id", w.ContainerID), zap.String("name", w.Name), userField(w.User)}
	case reconcile.WarnClaimedContainer:
		return "GPU process's cgroup names a container it does not run in; counted as a host process of its user",
			[]zap.Field{zap.Int("pid", w.Pid), zap.Uint32("uid", w.UID), userField(w.User), zap.String("claimed_container_id", w.ClaimedContainer)}
	case reconcile.WarnUserConflict:
		return "container's owner signals disagree: " + w.ContainerID + " " + w.Name,
			[]zap.Field{zap.String("container_id", w.ContainerID), userField(w.User), zap.String("user_source", w.UserSource), zap.Strings("user_signals", w.UserSignals)}
	}
	return w.Kind, []zap.Field{userField(w.User)}
}
