// Package event is the public API of the shared event log,
// /var/log/ds01/events.jsonl: the envelope, the event types and their
// details, the one encoder every line of this daemon goes through (Encode),
// the one decoder for reading lines back (Decode), and the one reader of
// the log and its archives (Reader).
//
// The file contract (docs/COMPAT.md has it whole):
//   - One JSON object per line, appended; each line is one write(2) of at
//     most MaxLineBytes bytes, so lines of several writers never interleave.
//   - The envelope is the Python scanner's v1: keys timestamp, event_type,
//     schema_version ("1"), user, source, details, in that order, compact
//     separators, ASCII escaping. user and source are left out when empty.
//   - timestamp is UTC in the form 2026-02-04T10:30:00.123456Z.
//   - An event too large for a line has its details replaced by
//     {"truncated":true,"original_size":N}.
//   - logrotate renames or truncates the file; archives are
//     events.jsonl-YYYYMMDD[.gz] or events.jsonl.N[.gz] (ArchiveNames).
package event

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/ds01/ds01-detectord/internal/asciijson"
	"github.com/ds01/ds01-detectord/internal/textcut"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

const (
	// DefaultPath is the shared event log.
	DefaultPath = "/var/log/ds01/events.jsonl"
	// SchemaVersion is the envelope version.
	SchemaVersion = "1"
	// Source is what this daemon writes in the envelope's source key.
	Source = "ds01-detectord"
	// MaxLineBytes is the largest line written, newline excluded (4096, the
	// PIPE_BUF atomic-append size, less 96), as in the Python scanner.
	MaxLineBytes = 4000
	// maxUserRunes caps the envelope user when a line must be shrunk.
	maxUserRunes = 64
)

// Event types this daemon emits.
const (
	ContainerDiscovered    = "detection.container_discovered"
	ContainerStatusChanged = "detection.container_status_changed"
	ContainerExited        = "detection.container_exited" // the container was removed
	HostProcessDiscovered  = "detection.host_gpu_process_discovered"
	HostProcessExited      = "detection.host_gpu_process_exited"
	// GPUIdle: a workload has held GPU memory below the idle threshold on
	// every GPU it holds for --gpu-idle-after; GPUActive: it works again.
	GPUIdle   = "detection.gpu_idle"
	GPUActive = "detection.gpu_active"
	// Idle: the full idle verdict (GPU when held, CPU, network, each under
	// its threshold for idle_detection_window scans past the grace
	// period); Active: a signal went over its threshold again.
	Idle   = "detection.idle"
	Active = "detection.active"
	// ShortProcesses: a user's host GPU processes that ended before they
	// were confirmed, in aggregate (at most one line per user per
	// --interval).
	ShortProcesses = "detection.short_gpu_processes"
	// OwnerChanged: a live container's owner changed (docker rename, a
	// label update); its GPU-seconds are split by owner from then on.
	OwnerChanged = "detection.owner_changed"
)

// IdleDetails are the details of Idle and Active.
type IdleDetails struct {
	ContainerID  string                 `json:"container_id"`
	Name         string                 `json:"name"`
	Origin       string                 `json:"origin"`
	IdleSince    *inventory.Time        `json:"idle_since"`
	IdleDeadline *inventory.Time        `json:"idle_deadline,omitempty"`
	Signals      *inventory.IdleSignals `json:"signals"`
	Policy       *inventory.IdlePolicy  `json:"policy"`
}

// Envelope is one line of the event log.
type Envelope struct {
	Timestamp     inventory.Time  `json:"timestamp"`
	EventType     string          `json:"event_type"`
	SchemaVersion string          `json:"schema_version"`
	User          string          `json:"user,omitempty"`
	Source        string          `json:"source,omitempty"`
	Details       json.RawMessage `json:"details,omitempty"`

	// Raw and Pos are set by Reader: the line as read (without its
	// newline) and where. Never written.
	Raw []byte   `json:"-"`
	Pos Position `json:"-"`
}

// ContainerDiscoveredDetails are the details of ContainerDiscovered. The
// first five keys are the Python scanner's, in its order.
type ContainerDiscoveredDetails struct {
	ContainerID string   `json:"container_id"`
	Name        string   `json:"name"`
	Origin      string   `json:"origin"`
	HasGPU      bool     `json:"has_gpu"`
	Image       string   `json:"image"`
	Status      string   `json:"status"`
	GPUAccess   []string `json:"gpu_access"`
	UserSource  string   `json:"user_source"`
}

// ContainerStatusChangedDetails are the details of ContainerStatusChanged.
type ContainerStatusChangedDetails struct {
	ContainerID string `json:"container_id"`
	Name        string `json:"name"`
	OldStatus   string `json:"old_status"`
	NewStatus   string `json:"new_status"`
}

// ContainerExitedDetails are the details of ContainerExited.
type ContainerExitedDetails struct {
	ContainerID string `json:"container_id"`
	Name        string `json:"name"`
	Origin      string `json:"origin"`
	GPUSeconds
	// GPUUUIDs are the GPUs it had processes on when last seen.
	GPUUUIDs []string `json:"gpu_uuids,omitempty"`
	// ByOwner splits the counters by owner when the owner changed during
	// its life; the envelope's user is the last owner.
	ByOwner []inventory.OwnerSeconds `json:"gpu_seconds_by_owner,omitempty"`
}

// OwnerChangedDetails are the details of OwnerChanged; the envelope's user
// is the new owner.
type OwnerChangedDetails struct {
	ContainerID   string   `json:"container_id"`
	Name          string   `json:"name"`
	OldUser       string   `json:"old_user"`
	NewUser       string   `json:"new_user"`
	OldUserSource string   `json:"old_user_source"`
	NewUserSource string   `json:"new_user_source"`
	UserSignals   []string `json:"user_signals"`
}

// GPUSeconds are a workload's cumulative GPU-seconds at its exit: running
// time x GPUs granted, held, and busy (at or above the idle threshold).
type GPUSeconds struct {
	GPUAllocatedSeconds float64 `json:"gpu_allocated_seconds"`
	GPUHeldSeconds      float64 `json:"gpu_held_seconds"`
	GPUBusySeconds      float64 `json:"gpu_busy_seconds"`
}

// GPUIdleDetails are the details of GPUIdle and GPUActive. Exactly one of
// ContainerID and Pid is set.
type GPUIdleDetails struct {
	ContainerID      string          `json:"container_id,omitempty"`
	Pid              int             `json:"pid,omitempty"`
	GPUUUIDs         []string        `json:"gpu_uuids"`
	IdleSince        *inventory.Time `json:"idle_since"`
	GPUMemoryMB      *int64          `json:"gpu_memory_mb"`
	ThresholdPercent int             `json:"threshold_percent"`
}

// HostProcessDiscoveredDetails are the details of HostProcessDiscovered.
type HostProcessDiscoveredDetails struct {
	Pid         int    `json:"pid"`
	Cmdline     string `json:"cmdline"`
	GPUMemoryMB *int64 `json:"gpu_memory_mb"`
	GPUUUID     string `json:"gpu_uuid"`
	StartTime   uint64 `json:"start_time,omitempty"`
}

// HostProcessExitedDetails are the details of HostProcessExited.
type HostProcessExitedDetails struct {
	Pid       int    `json:"pid"`
	Cmdline   string `json:"cmdline"`
	StartTime uint64 `json:"start_time,omitempty"`
	GPUSeconds
	GPUUUIDs []string `json:"gpu_uuids,omitempty"`
}

// ShortProcessesDetails are the details of ShortProcesses: how many
// processes ended unconfirmed between Since and Until, their GPU-seconds
// and the GPUs they used.
type ShortProcessesDetails struct {
	Count int             `json:"count"`
	Since *inventory.Time `json:"since"`
	Until *inventory.Time `json:"until"`
	GPUSeconds
	GPUUUIDs []string `json:"gpu_uuids"`
}

// Result says how Encode had to shrink a line.
type Result struct {
	Truncated    bool // details were replaced by {"truncated":true,"original_size":N}
	OriginalSize int  // bytes of the first encoding
}

// Encode renders one event as a line without its trailing newline. The line
// is valid JSON, pure ASCII and at most MaxLineBytes long. When the full
// event is too large it applies the Python scanner's rule, replacing the details
// with {"truncated":true,"original_size":N}; if even that is too large (a
// huge user name) the user is cut short too, so no event is ever dropped.
func Encode(e Envelope, details any) ([]byte, Result, error) {
	if e.SchemaVersion == "" {
		e.SchemaVersion = SchemaVersion
	}
	if details != nil {
		raw, err := json.Marshal(details)
		if err != nil {
			return nil, Result{}, fmt.Errorf("event details: %w", err)
		}
		e.Details = raw
	}
	line, err := asciijson.Marshal(e, "")
	if err != nil {
		return nil, Result{}, err
	}
	if len(line) <= MaxLineBytes {
		return line, Result{}, nil
	}
	res := Result{Truncated: true, OriginalSize: len(line)}
	e.Details = json.RawMessage(fmt.Sprintf(`{"truncated":true,"original_size":%d}`, len(line)))
	if line, err = asciijson.Marshal(e, ""); err != nil {
		return nil, res, err
	}
	if len(line) <= MaxLineBytes {
		return line, res, nil
	}
	e.User = cutRunes(e.User, maxUserRunes)
	e.EventType = cutRunes(e.EventType, maxUserRunes)
	line, err = asciijson.Marshal(e, "")
	return line, res, err
}

func cutRunes(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return textcut.Runes(s, n) + "..."
}

// Decode parses one line of the event log: the one decoder for the file,
// used by the daemon's start-up recovery and by ds01-workloads. It reads
// the v1 envelope and the older {"ts", "event"} lines some ds01 tools still
// write (docs/COMPAT.md). A line is an event when it is a JSON object with
// an RFC 3339 timestamp and a non-empty event type. A user that is not a
// string (null in old lines) reads as "". The line may end in a newline.
func Decode(line []byte) (Envelope, error) {
	var v struct {
		Timestamp     *string         `json:"timestamp"`
		TS            *string         `json:"ts"`
		EventType     string          `json:"event_type"`
		Event         string          `json:"event"`
		SchemaVersion json.RawMessage `json:"schema_version"`
		User          json.RawMessage `json:"user"`
		Source        json.RawMessage `json:"source"`
		Details       json.RawMessage `json:"details"`
	}
	if err := json.Unmarshal(line, &v); err != nil {
		return Envelope{}, err
	}
	e := Envelope{EventType: v.EventType, Details: v.Details}
	if e.EventType == "" {
		e.EventType = v.Event
	}
	if e.EventType == "" {
		return Envelope{}, errors.New("event has no event_type")
	}
	ts := v.Timestamp
	if ts == nil {
		ts = v.TS
	}
	if ts == nil {
		return Envelope{}, errors.New("event has no timestamp")
	}
	t, err := time.Parse(time.RFC3339Nano, *ts)
	if err != nil {
		return Envelope{}, fmt.Errorf("event timestamp: %w", err)
	}
	e.Timestamp = inventory.NewTime(t)
	_ = json.Unmarshal(v.User, &e.User) // not a string: no user
	_ = json.Unmarshal(v.Source, &e.Source)
	if json.Unmarshal(v.SchemaVersion, &e.SchemaVersion) != nil {
		var n json.Number
		if json.Unmarshal(v.SchemaVersion, &n) == nil {
			e.SchemaVersion = n.String()
		}
	}
	if string(e.Details) == "null" {
		e.Details = nil
	}
	return e, nil
}
