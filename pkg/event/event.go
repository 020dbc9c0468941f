// Package event holds the public types of the event log,
// /var/log/ds01/events.jsonl, and the one encoder every line goes through.
// The envelope is the reference's v1 (REFERENCE §2): same keys, same order,
// same timestamp format, compact separators and ASCII escaping.
package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"unicode/utf8"

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
	// PIPE_BUF atomic-append size, less 96), as in the reference.
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
)

// Envelope is one line of the event log.
type Envelope struct {
	Timestamp     inventory.Time  `json:"timestamp"`
	EventType     string          `json:"event_type"`
	SchemaVersion string          `json:"schema_version"`
	User          string          `json:"user,omitempty"`
	Source        string          `json:"source,omitempty"`
	Details       json.RawMessage `json:"details,omitempty"`
}

// ContainerDiscoveredDetails are the details of ContainerDiscovered. The
// first five keys are the reference's, in its order.
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
}

// Result says how Encode had to shrink a line.
type Result struct {
	Truncated    bool // details were replaced by {"truncated":true,"original_size":N}
	OriginalSize int  // bytes of the first encoding
}

// Encode renders one event as a line without its trailing newline. The line
// is valid JSON, pure ASCII and at most MaxLineBytes long. When the full
// event is too large it applies the reference's rule, replacing the details
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
	line, err := inventory.MarshalASCII(e, "")
	if err != nil {
		return nil, Result{}, err
	}
	if len(line) <= MaxLineBytes {
		return line, Result{}, nil
	}
	res := Result{Truncated: true, OriginalSize: len(line)}
	e.Details = json.RawMessage(fmt.Sprintf(`{"truncated":true,"original_size":%d}`, len(line)))
	if line, err = inventory.MarshalASCII(e, ""); err != nil {
		return nil, res, err
	}
	if len(line) <= MaxLineBytes {
		return line, res, nil
	}
	e.User = cutRunes(e.User, maxUserRunes)
	e.EventType = cutRunes(e.EventType, maxUserRunes)
	line, err = inventory.MarshalASCII(e, "")
	return line, res, err
}

func cutRunes(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n]) + "..."
}

// Decode parses one line of the event log.
func Decode(line []byte) (Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(line, &e); err != nil {
		return Envelope{}, err
	}
	if e.EventType == "" {
		return Envelope{}, fmt.Errorf("event has no event_type")
	}
	return e, nil
}

// ReadLog reads a whole event log file. A missing file is an empty log. It
// fails on a line that does not parse, and on a last line without its
// newline (a partial write).
func ReadLog(path string) ([]Envelope, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		tail := b[max(0, len(b)-80):]
		return nil, fmt.Errorf("%s ends in a partial line: %q", path, tail)
	}
	var out []Envelope
	for i, line := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		if len(b) == 0 {
			break
		}
		e, err := Decode(line)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, i+1, err)
		}
		out = append(out, e)
	}
	return out, nil
}
