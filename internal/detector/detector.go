// Package detector runs one scan cycle: it asks each source what exists,
// classifies it, compares the result with what it has already reported,
// queues the transitions as events, rewrites the state file and appends the
// events. It keeps its own view of what it has reported for the life of the
// process, so a failed write never loses or repeats a transition.
package detector

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"syscall"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/classify"
	"github.com/ds01/ds01-detectord/internal/dockersrc"
	"github.com/ds01/ds01-detectord/internal/eventlog"
	"github.com/ds01/ds01-detectord/internal/gpu"
	"github.com/ds01/ds01-detectord/internal/procfs"
	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Containers is the Docker source as the detector sees it.
type Containers interface {
	List(ctx context.Context) (dockersrc.Snapshot, error)
}

// Config is the detector's wiring.
type Config struct {
	StatePath  string
	EventsPath string
	DryRun     bool // write nothing; Cycle returns the state for printing
	Docker     Containers
	GPU        GPUs // nil: no GPU source
	Proc       procfs.FS
	// ExtraExcluded adds process names to DefaultExcluded.
	ExtraExcluded []string
	// KeepSecrets turns off the masking of secret-looking arguments in
	// recorded command lines.
	KeepSecrets bool
	// StateGroup, when set, makes the state file 0640 root:StateGroup.
	StateGroup string
	Users      classify.Resolver
	Log        *zap.Logger
	Now        func() time.Time
}

// Detector carries the reported view from one cycle to the next.
type Detector struct {
	cfg Config

	reported      inventory.State // the last state whose transitions were queued
	pending       [][]byte        // encoded event lines not yet appended
	excludedNames []string

	// last errors, so that a failure is logged once when it starts and once
	// when it ends, not every cycle
	stateErr, eventsErr string
	sourceErr           map[string]string
	uidCache            map[string]initProc // container ID → init process
}

// Summary describes one finished cycle.
type Summary struct {
	Containers     int
	GPUContainers  int
	HostProcesses  int
	PendingEvents  int
	Events         int
	EventCounts    map[string]int // queued events by type
	DockerOK       bool
	DockerError    string
	GPUOK          bool
	GPUError       string
	Duration       time.Duration
	State          inventory.State
	StateWriteErr  error
	EventAppendErr error
}

// New loads the state file as the starting view. A corrupt file is moved
// aside and logged; the detector starts fresh and never fails here.
func New(cfg Config) *Detector {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	st, err := statefile.Load(cfg.StatePath)
	if err != nil {
		cfg.Log.Warn("state file not loaded", zap.String("path", cfg.StatePath), zap.Error(err))
	}
	d := &Detector{cfg: cfg, reported: st, sourceErr: map[string]string{}, excludedNames: append(append([]string{}, DefaultExcluded...), cfg.ExtraExcluded...)}
	if !cfg.DryRun {
		statefile.CleanTemps(cfg.StatePath)
		// Lines the last run recorded in its state but may not have
		// appended: append those the log does not hold.
		missing, err := eventlog.Log{Path: cfg.EventsPath}.Missing(st.UnloggedEvents)
		if err != nil {
			cfg.Log.Warn("cannot check the event log for unlogged events; appending them", zap.Error(err))
		}
		for _, l := range missing {
			d.pending = append(d.pending, []byte(l))
		}
		if len(missing) > 0 {
			cfg.Log.Info("appending events the last run recorded but did not log", zap.Int("events", len(missing)))
		}
	}
	d.reported.UnloggedEvents = nil
	return d
}

// Reported returns the current reported view (read-only use).
func (d *Detector) Reported() inventory.State { return d.reported }

// Cycle runs one scan. It never fails as a whole: a failing source is
// recorded in the state's sources and its last known workloads are kept.
func (d *Detector) Cycle(ctx context.Context) Summary {
	start := d.cfg.Now()
	log := d.cfg.Log
	prev := d.reported
	next := inventory.Empty()
	next.Sources = prev.Sources
	next.DockerEventsSince = prev.DockerEventsSince
	next.HostProcesses = prev.HostProcesses
	next.PendingProcesses = prev.PendingProcesses

	var events []queued
	snap, err := d.cfg.Docker.List(ctx)
	next.Sources.Docker = d.health("docker", prev.Sources.Docker, err, start)
	next.Containers = make(map[string]inventory.Container, len(prev.Containers))
	if err != nil {
		for k, c := range prev.Containers { // keep the last known containers
			next.Containers[k] = c
		}
	} else {
		// The replay checkpoint: the stream's, once it has handled an event
		// (it never moves back); before that the last one stands, since the
		// stream may still be replaying from it; with none at all (a first
		// run, --once) the list itself reflects everything before it began.
		switch {
		case !snap.Checkpoint.IsZero():
			if prev.DockerEventsSince == nil || snap.Checkpoint.After(prev.DockerEventsSince.Time) {
				next.DockerEventsSince = inventory.TimePtr(snap.Checkpoint)
			}
		case prev.DockerEventsSince == nil && !snap.ListStart.IsZero():
			next.DockerEventsSince = inventory.TimePtr(snap.ListStart.Add(-time.Second))
		}
		next.Containers = d.buildContainers(snap.Containers, prev.Containers, start)
		events = append(events, diffContainers(prev.Containers, next.Containers)...)
		// Containers born and destroyed between two scans, known only from
		// the event stream: each gets its discovered and exited events.
		eph := d.buildContainers(snap.Ephemeral, nil, start)
		for _, k := range sortedKeys(eph) {
			if _, known := prev.Containers[k]; known {
				continue
			}
			if _, listed := next.Containers[k]; listed {
				continue
			}
			if _, done := prev.RecentlyExited[k]; done {
				continue // a replay of one already reported
			}
			events = append(events, diffContainers(nil, map[string]inventory.Container{k: eph[k]})...)
			events = append(events, diffContainers(map[string]inventory.Container{k: eph[k]}, nil)...)
		}
	}

	next.RecentlyExited = recentlyExited(prev, next, events, start)

	var procs []gpu.Process
	err = errNoGPUSource
	if d.cfg.GPU != nil {
		procs, err = d.cfg.GPU.Processes(ctx)
	}
	next.Sources.GPU = d.health("gpu", prev.Sources.GPU, err, start)
	if err != nil { // keep what was known of GPU use
		for k, c := range next.Containers {
			if o, ok := prev.Containers[k]; ok {
				c.GPUProcesses, c.GPUMemoryMB, c.GPUWithoutAccess = o.GPUProcesses, o.GPUMemoryMB, o.GPUWithoutAccess
				next.Containers[k] = c
			}
		}
		next.OtherGPUProcesses = prev.OtherGPUProcesses
	} else {
		for k, c := range next.Containers {
			c.GPUProcesses, c.GPUMemoryMB, c.GPUWithoutAccess = []inventory.GPUProcess{}, nil, false
			next.Containers[k] = c
		}
		var seen map[string]inventory.HostProcess
		seen, next.OtherGPUProcesses = d.attribute(procs, next.Containers)
		var hostEvents []queued
		next.HostProcesses, next.PendingProcesses, hostEvents = applyTransientRule(seen, prev.HostProcesses, prev.PendingProcesses, start)
		events = append(events, hostEvents...)
		d.warnGPUWithoutAccess(prev.Containers, next.Containers)
	}
	if next.OtherGPUProcesses == nil {
		next.OtherGPUProcesses = []inventory.GPUProcess{}
	}
	now := d.cfg.Now()
	next.LastScan = inventory.TimePtr(now)

	sum := Summary{
		Containers: len(next.Containers), HostProcesses: len(next.HostProcesses),
		DockerOK: next.Sources.Docker.OK, DockerError: next.Sources.Docker.Error,
		GPUOK: next.Sources.GPU.OK, GPUError: next.Sources.GPU.Error,
		State: next, Events: len(events), EventCounts: map[string]int{},
	}
	for _, q := range events {
		sum.EventCounts[q.eventType]++
	}
	for _, c := range next.Containers {
		if c.HasGPU {
			sum.GPUContainers++
		}
	}
	if d.cfg.DryRun {
		sum.Duration = time.Since(start)
		return sum
	}

	for _, q := range events {
		line, res, err := event.Encode(event.Envelope{
			Timestamp: inventory.NewTime(now), EventType: q.eventType, User: q.user, Source: event.Source,
		}, q.details)
		if err != nil { // cannot happen with our own types; say so loudly
			log.Error("event not encodable", zap.String("event_type", q.eventType), zap.Error(err))
			continue
		}
		if res.Truncated {
			log.Warn("event too large; details truncated", zap.String("event_type", q.eventType), zap.Int("original_size", res.OriginalSize))
		}
		q.logFields = append(q.logFields, zap.String("event_type", q.eventType))
		// Only safe text goes into the message (IDs, Docker names, PIDs);
		// user-controlled strings travel as escaped structured fields.
		log.Info(q.message, q.logFields...)
		d.pending = append(d.pending, line)
	}
	d.reported = next

	// The state first, carrying the lines about to be appended; then the
	// lines. A crash between the two leaves them in the state file, and the
	// next start appends those the log lacks: exactly once. If the state
	// cannot be written the lines are appended anyway (at least once).
	toWrite := next
	for _, l := range d.pending {
		toWrite.UnloggedEvents = append(toWrite.UnloggedEvents, string(l))
	}
	serr := statefile.Save(d.cfg.StatePath, toWrite, d.cfg.StateGroup)
	d.stateErr = d.noteErr("state file write", serr, d.stateErr, zap.String("path", d.cfg.StatePath))
	n, aerr := eventlog.Log{Path: d.cfg.EventsPath}.Append(d.pending)
	d.pending = d.pending[n:]
	if len(d.pending) == 0 {
		d.pending = nil
	}
	d.eventsErr = d.noteErr("event log append", aerr, d.eventsErr, zap.String("path", d.cfg.EventsPath), zap.Int("pending_events", len(d.pending)))

	sum.PendingEvents = len(d.pending)
	sum.StateWriteErr, sum.EventAppendErr = serr, aerr
	sum.Duration = time.Since(start)
	return sum
}

var errNoGPUSource = errors.New("no GPU source configured")

// recentlyExited adds this cycle's removals to the record and forgets
// those a replay can no longer bring up: reported well before the replay
// checkpoint.
func recentlyExited(prev, next inventory.State, events []queued, now time.Time) map[string]inventory.Time {
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
	for _, q := range events {
		if d, ok := q.details.(event.ContainerExitedDetails); ok {
			out[d.ContainerID] = inventory.NewTime(now)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// health records a source's result. It warns once when the source starts
// failing and logs once when it recovers; while it keeps failing, a changed
// error is logged at debug level only, so the journal gets one line per
// state change, not one per cycle.
func (d *Detector) health(name string, prev inventory.SourceHealth, err error, now time.Time) inventory.SourceHealth {
	_, failing := d.sourceErr[name]
	if err != nil {
		switch {
		case !failing:
			d.cfg.Log.Warn(name+" source failed; keeping last known state", zap.String("source", name), zap.Error(err))
		case d.sourceErr[name] != err.Error():
			d.cfg.Log.Debug(name+" source still failing", zap.String("source", name), zap.Error(err))
		}
		d.sourceErr[name] = err.Error()
		return inventory.SourceHealth{OK: false, Error: err.Error(), LastOK: prev.LastOK}
	}
	if failing {
		d.cfg.Log.Info(name+" source recovered", zap.String("source", name))
		delete(d.sourceErr, name)
	}
	return inventory.SourceHealth{OK: true, LastOK: inventory.TimePtr(now)}
}

// warnGPUWithoutAccess logs once when a container starts using a GPU its
// configuration does not grant.
func (d *Detector) warnGPUWithoutAccess(prev, cur map[string]inventory.Container) {
	for _, k := range sortedKeys(cur) {
		c := cur[k]
		if c.GPUWithoutAccess && !prev[k].GPUWithoutAccess {
			d.cfg.Log.Warn("container uses a GPU its configuration does not grant",
				zap.String("container_id", c.ID), zap.String("name", c.Name), userField(c.User))
		}
	}
}

// noteErr logs a write failure when it starts or its kind changes (disk
// full, then read-only, say) and a recovery when it ends, and returns the
// remembered kind. The kind is the system error when there is one, since
// the full text names a fresh temporary file every time.
func (d *Detector) noteErr(what string, err error, last string, fields ...zap.Field) string {
	switch {
	case err == nil && last != "":
		d.cfg.Log.Info(what+" recovered", fields...)
		return ""
	case err == nil:
		return ""
	}
	kind := errKind(err)
	if kind != last {
		d.cfg.Log.Error(what+" failed; will retry every cycle", append(fields, zap.Error(err))...)
	}
	return kind
}

func errKind(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

func (d *Detector) buildContainers(list []dockersrc.Container, prev map[string]inventory.Container, now time.Time) map[string]inventory.Container {
	out := make(map[string]inventory.Container, len(list))
	uids := make(map[string]initProc, len(list))
	for _, c := range list {
		in := c.Input
		if c.Pid > 0 {
			in.InitUID = d.initUID(c.ID, c.Pid)
			uids[c.ID] = initProc{c.Pid, in.InitUID}
		}
		access := classify.GPUAccess(in)
		hasGPU := len(access) > 0
		user, src := classify.User(in, d.cfg.Users)
		key := shortID(c.ID)
		e := inventory.Container{
			ID: key, Name: c.Name, Origin: classify.Origin(in.Labels, c.Name),
			User: user, HasGPU: hasGPU, GPUDevices: classify.GPUDevices(in, hasGPU),
			Status: c.Status, Image: c.Image, DetectedAt: inventory.NewTime(now),
			FullID: c.ID, UserSource: src, GPUAccess: access, Pid: c.Pid,
			GPUProcesses: []inventory.GPUProcess{},
		}
		if !c.Created.IsZero() {
			e.CreatedAt = inventory.TimePtr(c.Created)
		}
		if old, ok := prev[key]; ok && !old.DetectedAt.IsZero() {
			e.DetectedAt = old.DetectedAt
		}
		out[key] = e
	}
	if prev != nil { // forget the UIDs of processes no longer listed
		d.uidCache = uids
	}
	return out
}

// initProc is a container's init process and its real UID.
type initProc struct {
	pid int
	uid *uint32
}

// initUID reads the real UID of a container's init process, once per
// container and PID.
func (d *Detector) initUID(id string, pid int) *uint32 {
	if p, ok := d.uidCache[id]; ok && p.pid == pid && p.uid != nil {
		return p.uid
	}
	uid, err := d.cfg.Proc.UID(pid)
	if err != nil {
		return nil
	}
	return &uid
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// queued is a transition waiting to be encoded.
type queued struct {
	eventType string
	user      string
	details   any
	message   string
	logFields []zap.Field
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// diffContainers lists the transitions from old to new, in the reference's
// order: discovered and status changes, then removals.
func diffContainers(old, cur map[string]inventory.Container) []queued {
	var out []queued
	for _, k := range sortedKeys(cur) {
		c := cur[k]
		fields := []zap.Field{zap.String("container_id", c.ID), zap.String("name", c.Name), userField(c.User)}
		o, seen := old[k]
		switch {
		case !seen:
			out = append(out, queued{
				eventType: event.ContainerDiscovered, user: c.User, message: "container discovered: " + c.ID + " " + c.Name,
				details: event.ContainerDiscoveredDetails{
					ContainerID: c.ID, Name: c.Name, Origin: c.Origin, HasGPU: c.HasGPU, Image: c.Image,
					Status: c.Status, GPUAccess: c.GPUAccess, UserSource: c.UserSource,
				},
				logFields: append(fields, zap.String("origin", c.Origin), zap.Bool("has_gpu", c.HasGPU), zap.String("status", c.Status)),
			})
		case o.Status != c.Status:
			out = append(out, queued{
				eventType: event.ContainerStatusChanged, user: c.User, message: "container " + c.ID + " " + c.Name + ": " + o.Status + " -> " + c.Status,
				details: event.ContainerStatusChangedDetails{
					ContainerID: c.ID, Name: c.Name, OldStatus: o.Status, NewStatus: c.Status,
				},
				logFields: append(fields, zap.String("old_status", o.Status), zap.String("new_status", c.Status)),
			})
		}
	}
	for _, k := range sortedKeys(old) {
		if _, ok := cur[k]; ok {
			continue
		}
		o := old[k]
		out = append(out, queued{
			eventType: event.ContainerExited, user: o.User, message: "container removed: " + o.ID + " " + o.Name,
			details:   event.ContainerExitedDetails{ContainerID: o.ID, Name: o.Name, Origin: o.Origin},
			logFields: []zap.Field{zap.String("container_id", o.ID), zap.String("name", o.Name), userField(o.User)},
		})
	}
	return out
}

// maxLogValue caps user-controlled strings in log fields (a label can hold
// a megabyte).
const maxLogValue = 256

// userField is the user as a log field, cut to maxLogValue bytes on a rune
// boundary. The field's encoder escapes control characters.
func userField(u string) zap.Field {
	if len(u) > maxLogValue {
		cut := maxLogValue
		for cut > 0 && !utf8.RuneStart(u[cut]) {
			cut--
		}
		u = u[:cut] + "…"
	}
	return zap.String("user", u)
}

// StatusLine is the one-line summary used for logs and sd_notify STATUS=.
func (s Summary) StatusLine() string {
	line := fmt.Sprintf("%d containers (%d with GPU), %d host GPU processes; docker ", s.Containers, s.GPUContainers, s.HostProcesses)
	if s.DockerOK {
		line += "ok"
	} else {
		line += "unavailable: " + s.DockerError
	}
	if s.GPUOK {
		line += "; gpu ok"
	} else if s.GPUError != "" {
		line += "; gpu unavailable: " + s.GPUError
	}
	return line
}
