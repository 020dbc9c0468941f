package inventory

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/ds01/ds01-detectord/internal/safefile"
)

// MaxFileBytes caps how much of a state file Read (and the daemon) accepts. A real state
// file of a busy host is a few megabytes; anything far larger is not one.
const MaxFileBytes = 256 << 20

// ErrNewerSchema is wrapped by Parse's error for a file a newer version
// wrote (schema_version above SchemaVersion).
var ErrNewerSchema = errors.New("state file written by a newer version")

// Parse decodes a state file's bytes and checks its schema. Files without
// schema_version were written by the Python scanner and are accepted as
// version 1. A newer or otherwise unknown schema is an error, as is a file
// with no "containers" object or a container filed under a key other than
// its own 12-character id. All maps of the result are allocated.
func Parse(b []byte) (State, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return State{}, fmt.Errorf("not a JSON object: %w", err)
	}
	st := Empty()
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("bad field: %w", err)
	}
	if _, ok := raw["schema_version"]; !ok {
		st.SchemaVersion = 1
	}
	if st.SchemaVersion > SchemaVersion {
		return State{}, fmt.Errorf("unknown schema_version %d (this build reads 1 to %d): %w", st.SchemaVersion, SchemaVersion, ErrNewerSchema)
	}
	if st.SchemaVersion < 1 {
		return State{}, fmt.Errorf("unknown schema_version %d (this build reads 1 to %d)", st.SchemaVersion, SchemaVersion)
	}
	if _, ok := raw["containers"]; !ok {
		return State{}, errors.New(`no "containers" object`)
	}
	for k, c := range st.Containers {
		if c.ID != k {
			return State{}, fmt.Errorf("container key %q holds id %q", k, c.ID)
		}
	}
	if st.Containers == nil {
		st.Containers = map[string]Container{}
	}
	if st.HostProcesses == nil {
		st.HostProcesses = map[string]HostProcess{}
	}
	if st.PendingProcesses == nil {
		st.PendingProcesses = map[string]HostProcess{}
	}
	st.SchemaVersion = SchemaVersion
	return st, nil
}

// ReadBytes returns the bytes of the state file at path: the one way this
// module reads the file. Read parses them; the daemon and ds01-workloads
// check their seal first. It never follows a symlink at path and never
// blocks: anything but a regular file (a FIFO planted there, a directory)
// is refused at once with an error that says what was found, and so is a
// file larger than MaxFileBytes. A missing file is an error wrapping
// fs.ErrNotExist.
func ReadBytes(path string) ([]byte, error) {
	f, err := safefile.Open(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > MaxFileBytes { // refused unread
		return nil, fmt.Errorf("%s is larger than %d bytes: refusing to read it", path, MaxFileBytes)
	}
	return safefile.ReadAll(f, path, MaxFileBytes)
}

// Read reads and parses the state file at path (ReadBytes, Parse) without
// changing it. A missing file is an empty state and no error.
func Read(path string) (State, error) {
	b, err := ReadBytes(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Empty(), nil
	}
	if err != nil {
		return State{}, err
	}
	return Parse(b)
}
