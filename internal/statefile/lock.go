package statefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ds01/ds01-detectord/internal/safefile"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// LockPath is the lock file of the state file at path: beside it, with
// ".lock" appended.
func LockPath(path string) string { return path + ".lock" }

// HeldError says another process holds the state file's lock.
type HeldError struct {
	Path string // the lock file
	PID  int    // the holder, as it wrote itself into the file; 0 if unknown
}

func (e *HeldError) Error() string {
	who := "another process"
	if e.PID > 0 {
		who = "ds01-detectord PID " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("the state file is in use by %s (lock %s): one daemon per state file", who, e.Path)
}

// Lock is a held lock on a state file.
type Lock struct{ f *os.File }

// Release lets the lock go.
func (l *Lock) Release() {
	if l != nil && l.f != nil {
		l.f.Close() // closing the descriptor drops the flock
		l.f = nil
	}
}

// TakeLock takes the exclusive lock of the state file at path (flock on
// LockPath), so that one daemon at a time writes it, and writes this
// process's PID into the lock file. When another process holds it,
// TakeLock fails at once with a *HeldError naming the holder's PID.
//
// The directory is writable by the docker group: a lock file this process
// does not own (or something other than a regular file there) was put
// there by someone else, who could hold a flock on it to keep the daemon
// from starting; it is removed and made afresh.
func TakeLock(path string) (*Lock, error) {
	lp := LockPath(path)
	if err := os.MkdirAll(filepath.Dir(lp), 0o775); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		// Read-only: a descriptor open for writing would keep the file
		// system from being remounted read-only.
		f, err := safefile.Open(lp, os.O_RDONLY|os.O_CREATE, 0o644)
		if errors.Is(err, safefile.ErrNotRegular) && attempt == 0 {
			if rerr := os.Remove(lp); rerr != nil {
				return nil, fmt.Errorf("lock file: %w (and cannot remove it: %v)", err, rerr)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lock file: %w", err)
		}
		if st, ok := stat(f); ok && int(st.Uid) != os.Geteuid() && attempt == 0 {
			f.Close()
			if err := os.Remove(lp); err != nil {
				return nil, fmt.Errorf("lock file %s belongs to UID %d and cannot be removed: %w", lp, st.Uid, err)
			}
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			defer f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				b := make([]byte, 32)
				n, _ := f.ReadAt(b, 0)
				pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
				return nil, &HeldError{Path: lp, PID: pid}
			}
			return nil, fmt.Errorf("lock %s: %w", lp, err)
		}
		if w, err := safefile.Open(lp, os.O_WRONLY|os.O_TRUNC, 0); err == nil {
			w.WriteString(strconv.Itoa(os.Getpid()) + "\n")
			w.Close()
		}
		return &Lock{f: f}, nil
	}
}

func stat(f *os.File) (*syscall.Stat_t, bool) {
	fi, err := f.Stat()
	if err != nil {
		return nil, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return st, ok
}

// CheckSchema fails when the state file at path was written by a newer
// version of the daemon (inventory.ErrNewerSchema): this one must not
// rewrite it, nor move it aside, or going back loses the counters and
// reports every workload as new. A missing or unreadable file, or one
// that does not parse, passes: Load deals with those.
func CheckSchema(path string) error {
	b, err := inventory.ReadBytes(path)
	if err != nil {
		return nil
	}
	var head struct {
		SchemaVersion *int `json:"schema_version"`
	}
	if json.Unmarshal(b, &head) != nil || head.SchemaVersion == nil {
		return nil
	}
	if *head.SchemaVersion > inventory.SchemaVersion {
		return fmt.Errorf("state file %s has schema_version %d, newer than this build's %d: it was written by a newer ds01-detectord; refusing to start, leaving it untouched (install that version again, or move the file away to start afresh): %w",
			path, *head.SchemaVersion, inventory.SchemaVersion, inventory.ErrNewerSchema)
	}
	return nil
}
