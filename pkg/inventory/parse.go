package inventory

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
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

// Read reads and parses the state file at path without changing it. A
// missing file is an empty state and no error; a file larger than
// MaxFileBytes, or one that does not parse, is an error.
func Read(path string) (State, error) {
	// O_NONBLOCK: a FIFO planted at the path must not hang the reader.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return Empty(), nil
	}
	if err != nil {
		return State{}, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return State{}, err
	} else if !fi.Mode().IsRegular() {
		return State{}, fmt.Errorf("%s is not a regular file (%v)", path, fi.Mode().Type())
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return State{}, err
	}
	if len(b) > MaxFileBytes {
		return State{}, fmt.Errorf("%s is larger than %d bytes: not a state file", path, MaxFileBytes)
	}
	return Parse(b)
}
