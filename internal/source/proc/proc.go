// Package proc is the /proc source: it reads the few facts a scan needs
// about a PID (cgroup, UID, start time, arguments), under a configurable
// root so that tests can point it at fixture trees.
package proc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FS is a /proc tree.
type FS struct{ Root string }

// New returns an FS rooted at root ("/proc" when empty).
func New(root string) FS {
	if root == "" {
		root = "/proc"
	}
	return FS{Root: root}
}

func (fs FS) path(pid int, name string) string {
	return filepath.Join(fs.Root, strconv.Itoa(pid), name)
}

// UID returns the real UID of pid, from the first field of the Uid: line of
// /proc/<pid>/status.
func (fs FS) UID(pid int) (uint32, error) {
	b, err := os.ReadFile(fs.path(pid, "status"))
	if err != nil {
		return 0, err
	}
	return parseStatusUID(b)
}

func parseStatusUID(b []byte) (uint32, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			v, err := strconv.ParseUint(f[0], 10, 32)
			if err != nil {
				return 0, fmt.Errorf("status Uid line %q: %w", line, err)
			}
			return uint32(v), nil
		}
	}
	return 0, fmt.Errorf("status has no valid Uid line")
}

// ReadFailed reports whether err, from reading a /proc/<pid> file, is a
// failure of the reader rather than news about the process: a system error
// other than ENOENT and ESRCH (which say the process is gone), such as
// EMFILE, ENFILE, EACCES or EIO. Such an error says nothing about the
// process, and the caller must treat /proc as a failed source, not the
// process as gone. A file that was read but does not parse is not one.
func ReadFailed(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	return !errors.Is(err, fs.ErrNotExist) && errno != syscall.ESRCH
}

// ClockTicks is USER_HZ, the unit of /proc/<pid>/stat's start time: 100
// on every Linux architecture the daemon runs on.
const ClockTicks = 100

// BootTime is when the system booted, from /proc/uptime (10 ms
// resolution; /proc/stat's btime has whole seconds): with a process's start
// time in clock ticks since boot, when the process started.
func (fs FS) BootTime(now time.Time) (time.Time, error) {
	b, err := os.ReadFile(filepath.Join(fs.Root, "uptime"))
	if err != nil {
		return time.Time{}, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return time.Time{}, fmt.Errorf("/proc/uptime is empty")
	}
	up, err := strconv.ParseFloat(f[0], 64)
	if err != nil || up < 0 {
		return time.Time{}, fmt.Errorf("/proc/uptime %q: not an uptime", f[0])
	}
	return now.Add(-time.Duration(up * float64(time.Second))), nil
}

// Started turns a start time in clock ticks since boot into a time.
func Started(boot time.Time, ticks uint64) time.Time {
	return boot.Add(time.Duration(ticks) * (time.Second / ClockTicks))
}
