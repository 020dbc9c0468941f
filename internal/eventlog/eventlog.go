// Package eventlog appends lines to the shared JSONL event log. The file is
// opened for each batch with O_APPEND, so a logrotate rename, delete or
// copytruncate is followed without signals, and each line is one write(2),
// so lines from other writers never interleave with ours.
package eventlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ds01/ds01-detectord/internal/safefile"
	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/pkg/event"
)

// Mode is the event log's permission when this daemon creates it:
// root:docker 0664, so the Python scanner's other writers (the docker group's
// tools) can append. Group is that group; when it does not exist the file
// keeps the daemon's group.
const (
	Mode  = 0o664
	Group = "docker"
)

// Log is an append-only JSONL file.
type Log struct{ Path string }

// Append writes each line (without its newline) as one write(2) and returns
// how many lines were written completely. It stops at the first failure.
// Before each write it reserves the line's bytes past the end of the file
// (fallocate with KEEP_SIZE) so that a full disk makes the write fail
// before it starts rather than leave half a line.
func (l Log) Append(lines [][]byte) (int, error) {
	if len(lines) == 0 {
		return 0, nil
	}
	if err := os.MkdirAll(filepath.Dir(l.Path), 0o775); err != nil {
		return 0, fmt.Errorf("event log dir: %w", err)
	}
	f, err := open(l.Path)
	if err != nil {
		return 0, fmt.Errorf("open event log: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 0, 4096)
	for i, line := range lines {
		buf = append(append(buf[:0], line...), '\n')
		if err := reserve(f, len(buf)); err != nil {
			return i, fmt.Errorf("event log %s: %w", l.Path, err)
		}
		n, err := f.Write(buf)
		if err != nil {
			return i, fmt.Errorf("event log %s: %w", l.Path, err)
		}
		if n != len(buf) {
			return i, fmt.Errorf("event log %s: short write %d of %d bytes", l.Path, n, len(buf))
		}
	}
	return len(lines), nil
}

// open opens path for appending. A file this call creates gets Mode and
// Group whatever the umask, as logrotate's "create" would give it.
func open(path string) (*os.File, error) {
	f, err := safefile.Open(path, os.O_WRONLY|os.O_APPEND, 0)
	if !errors.Is(err, os.ErrNotExist) {
		return f, err
	}
	f, err = safefile.Open(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, Mode)
	if errors.Is(err, os.ErrExist) { // another writer made it just now
		return safefile.Open(path, os.O_WRONLY|os.O_APPEND, 0)
	}
	if err != nil {
		return nil, err
	}
	setGroup(f)
	f.Chmod(Mode)
	return f, nil
}

// setGroup gives a file this call created to Group. Under the shipped
// unit the directory is setgid root:docker, so the file already has that
// group and nothing needs CAP_CHOWN; elsewhere (root with capabilities) the
// chown does it.
func setGroup(f *os.File) {
	g, err := user.LookupGroup(Group)
	if err != nil {
		return
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return
	}
	if fi, err := f.Stat(); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Gid) == gid {
			return
		}
	}
	f.Chown(-1, gid)
}

func reserve(f *os.File, n int) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, st.Size(), int64(n))
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return nil // filesystem cannot reserve; write and check the count
	}
	return err
}

// RepairTornTail removes a torn last line that is one of ours: a log that
// does not end in a newline, whose last fragment is the start of one of
// lines (the lines the last run recorded as not yet logged). A SIGKILL can
// end a write(2) part way when the line crosses a page of the file, and
// appending the whole line again after the fragment would glue the two
// into one garbage line. A fragment that is not the start of one of ours
// is someone else's: it is ended with a newline, so that it stays theirs
// and ours start on a line of their own. It reports how many bytes it cut,
// and whether it ended someone else's fragment.
func (l Log) RepairTornTail(lines []string) (cut int, ended bool, err error) {
	if len(lines) == 0 {
		return 0, false, nil
	}
	f, err := safefile.Open(l.Path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return 0, false, err
	}
	longest := 0
	for _, line := range lines {
		longest = max(longest, len(line))
	}
	n := min(st.Size(), int64(longest)+1)
	tail := make([]byte, n)
	if _, err := f.ReadAt(tail, st.Size()-n); err != nil {
		return 0, false, err
	}
	if tail[len(tail)-1] == '\n' {
		return 0, false, nil
	}
	frag, whole := tail, n == st.Size() // whole: the fragment's start was read
	if i := bytes.LastIndexByte(tail, '\n'); i >= 0 {
		frag, whole = tail[i+1:], true
	}
	// Another writer that appended since the read has moved the end: leave it.
	if now, err := f.Stat(); err != nil || now.Size() != st.Size() {
		return 0, false, err
	}
	for _, line := range lines {
		if whole && len(frag) < len(line) && strings.HasPrefix(line, string(frag)) {
			if err := f.Truncate(st.Size() - int64(len(frag))); err != nil {
				return 0, false, err
			}
			return len(frag), false, nil
		}
	}
	if _, err := f.WriteAt([]byte{'\n'}, st.Size()); err != nil {
		return 0, false, err
	}
	return 0, true, nil
}

// Missing returns the lines (without newlines) that the end of the log does
// not hold, in their order. It reads only as much of the end of the file
// as the lines could take up, plus a margin for other writers.
func (l Log) Missing(lines []string) ([]string, error) {
	if len(lines) == 0 {
		return nil, nil
	}
	want := int64(1 << 20)
	for _, line := range lines {
		want += int64(len(line)) + 1
	}
	have := map[string]bool{}
	for e, err := range (event.Reader{Path: l.Path, Tail: want, Undecoded: true}).Events(context.Background()) {
		var lineErr *event.LineError
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return lines, nil
		case err != nil && !errors.As(err, &lineErr):
			return lines, err
		}
		have[string(e.Raw)] = true // events or not: the lines are compared as bytes
	}
	var out []string
	for _, line := range lines {
		if !have[line] {
			out = append(out, line)
		}
	}
	return out, nil
}

// LastSealed returns the seal chain's end at the end of the log: the
// sequence number and MAC of the last line whose seal verifies with key,
// read from the last MiB. ok is false when there is none (a new log, or
// one that logrotate just emptied: the chain then starts afresh).
func (l Log) LastSealed(key *seal.Key) (h seal.Head, ok bool) {
	for e := range (event.Reader{Path: l.Path, Tail: 1 << 20, Undecoded: true}).Events(context.Background()) {
		if c := key.CheckLine(e.Raw); c.Valid {
			h, ok = seal.Head{Seq: c.Seq, MAC: c.MAC}, true
		}
	}
	return h, ok
}
