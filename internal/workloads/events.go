package workloads

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ds01/ds01-detectord/internal/asciijson"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// ParseTime reads a --since/--until value: RFC 3339 ("2026-02-04T10:30:00Z"),
// a date ("2026-02-04", local midnight), a local date and time
// ("2026-02-04 10:30" or with seconds), "now", or a duration back from now
// ("90m", "2h", "3d").
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "now" {
		return now, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02 15:04", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, now.Location()); err == nil {
			return t, nil
		}
	}
	if strings.HasSuffix(s, "d") {
		var n int
		if _, err := fmt.Sscanf(s, "%dd", &n); err == nil && fmt.Sprintf("%dd", n) == s {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use RFC 3339 (2026-02-04T10:30:00Z), a date (2026-02-04), a local date and time (2026-02-04 10:30), or a duration back from now (90m, 2h, 3d)", s)
}

// MaxLineBytes is the longest line the events view reads (16 times what
// the daemon writes); longer lines are skipped.
const MaxLineBytes = 64 << 10

// EventFilter selects event lines.
type EventFilter struct {
	Since, Until time.Time // zero: open
	TypePrefix   string
	User         string
}

// Event is one parsed line, kept with its raw bytes.
type Event struct {
	Time          time.Time
	EventType     string
	SchemaVersion string
	User          string
	Source        string
	Details       json.RawMessage
	Raw           []byte
}

// parseEvent reads one line with the event log's one decoder, which takes
// both the v1 envelope and the older ts/event lines.
func parseEvent(line []byte) (Event, bool) {
	env, err := event.Decode(line)
	if err != nil {
		return Event{}, false
	}
	if len(env.Details) > 0 && !json.Valid(env.Details) {
		env.Details = nil
	}
	return Event{Time: env.Timestamp.Time, EventType: env.EventType, SchemaVersion: env.SchemaVersion, User: env.User, Source: env.Source, Details: env.Details, Raw: line}, true
}

// openRegular opens a file for reading that others may have put there
// (/var/log/ds01 is group-writable): without blocking on a FIFO, and only
// when it is a regular file.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = &notRegularError{path}
		}
		return nil, err
	}
	return f, nil
}

type notRegularError struct{ path string }

func (e *notRegularError) Error() string { return e.path + " is not a regular file" }

// Match compares times as times, the type as a prefix, the user exactly.
func (f EventFilter) Match(e Event) bool {
	if !f.Since.IsZero() && e.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && e.Time.After(f.Until) {
		return false
	}
	if f.TypePrefix != "" && !strings.HasPrefix(e.EventType, f.TypePrefix) {
		return false
	}
	if f.User != "" && e.User != f.User {
		return false
	}
	return true
}

// EventPrinter writes events as table rows or JSON lines.
type EventPrinter struct {
	Out    io.Writer
	JSON   bool
	Style  Style
	header bool
}

// Print writes one event.
func (p *EventPrinter) Print(e Event) {
	if p.JSON {
		// Re-encoded, never copied: the file is group-writable, and its
		// bytes must not reach the terminal as they are. The output is
		// ASCII only (\uXXXX escapes), one object per line.
		b, err := asciijson.Marshal(event.Envelope{
			Timestamp: inventory.NewTime(e.Time), EventType: e.EventType, SchemaVersion: e.SchemaVersion,
			User: e.User, Source: e.Source, Details: e.Details,
		}, "")
		if err != nil {
			return
		}
		p.Out.Write(append(b, '\n'))
		return
	}
	if !p.header {
		fmt.Fprintf(p.Out, "%s\n", p.Style.paint(bold, fmt.Sprintf("%-27s %-40s %-16s %s", "TIMESTAMP", "EVENT TYPE", "USER", "DETAILS")))
		p.header = true
	}
	user := e.User
	if user == "" {
		user = "-"
	}
	details := "-"
	if len(e.Details) > 0 {
		details = KeyValues(e.Details)
	}
	room := 200
	if p.Style.Width > 0 {
		room = max(p.Style.Width-86, 20)
	}
	fmt.Fprintf(p.Out, "%-27s %-40s %-16s %s\n", inventory.NewTime(e.Time).String(), cut(e.EventType, 40), cut(user, 16), cut(details, room))
}

// ReadEvents prints the matching events of the file, the last limit of
// them when limit > 0. It returns how many were printed and the offset it
// read up to.
func ReadEvents(path string, f EventFilter, limit int, p *EventPrinter) (int, int64, error) {
	fh, err := openRegular(path)
	if err != nil {
		return 0, 0, err
	}
	defer fh.Close()
	var keep []Event
	var off int64
	r := bufio.NewReaderSize(fh, MaxLineBytes)
	long := false // inside a line longer than MaxLineBytes: skipped
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			off += int64(len(line))
			long = true
			continue
		}
		if len(line) > 0 && line[len(line)-1] == '\n' {
			off += int64(len(line))
			if !long {
				if e, ok := parseEvent(bytes.Clone(line)); ok && f.Match(e) {
					keep = append(keep, e)
					if limit > 0 && len(keep) > limit {
						keep = keep[1:]
					}
				}
			}
			long = false
		}
		if err != nil {
			break // a partial last line is left for --follow
		}
	}
	for _, e := range keep {
		p.Print(e)
	}
	return len(keep), off, nil
}

// FollowChunk is how much Follow reads at a time.
const FollowChunk = 64 << 10

// followLines prints the whole lines of buf and returns what is left of
// it (a partial line, never longer than MaxLineBytes) and whether the
// line being read is too long to be an event and is skipped to its end.
func followLines(buf []byte, skipping bool, f EventFilter, p *EventPrinter) ([]byte, bool) {
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		if !skipping && i < MaxLineBytes {
			if e, ok := parseEvent(bytes.Clone(buf[:i+1])); ok && f.Match(e) {
				p.Print(e)
			}
		}
		skipping = false
		buf = buf[i+1:]
	}
	if len(buf) > MaxLineBytes { // a line too long to be an event: skip to its end
		return nil, true
	}
	if skipping {
		return nil, true
	}
	return bytes.Clone(buf), skipping
}

// Follow prints matching lines appended after offset until ctx ends. It
// follows logrotate: a truncated file is read from the start, and a
// replaced file (new inode) is reopened.
func Follow(ctx context.Context, path string, offset int64, f EventFilter, p *EventPrinter, poll time.Duration) error {
	var fh *os.File
	var ino uint64
	var partial []byte
	skipping := false // inside a line longer than MaxLineBytes
	chunk := make([]byte, FollowChunk)
	defer func() {
		if fh != nil {
			fh.Close()
		}
	}()
	for {
		if fh == nil {
			if h, err := openRegular(path); err == nil {
				fh, ino = h, inode(h)
				if _, err := fh.Seek(offset, io.SeekStart); err != nil {
					offset = 0
					fh.Seek(0, io.SeekStart)
				}
			}
		}
		if fh != nil {
			if fi, err := fh.Stat(); err == nil && fi.Size() < offset { // copytruncate
				offset, partial, skipping = 0, nil, false
				fh.Seek(0, io.SeekStart)
			}
			// In chunks: a writer that appends a gigabyte at once costs
			// this reader FollowChunk bytes and a partial line at a time.
			for ctx.Err() == nil {
				n, _ := fh.Read(chunk)
				if n == 0 {
					break
				}
				offset += int64(n)
				partial, skipping = followLines(append(partial, chunk[:n]...), skipping, f, p)
			}
			if st, err := os.Stat(path); err == nil && inodeOf(st) != ino { // renamed away: reopen
				fh.Close()
				fh, offset, partial, skipping = nil, 0, nil, false
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

// KeyValues writes an event's details as key=value pairs, in the order of
// the line: strings bare unless they hold spaces, quotes or '=' (then
// quoted), numbers and booleans as they are, objects and arrays as compact
// JSON. Anything that is not an object is shown as JSON.
func KeyValues(raw json.RawMessage) string {
	d := json.NewDecoder(bytes.NewReader(raw))
	if t, err := d.Token(); err != nil || t != json.Delim('{') {
		return string(raw)
	}
	var parts []string
	for d.More() {
		t, err := d.Token()
		if err != nil {
			return string(raw)
		}
		key, _ := t.(string)
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return string(raw)
		}
		val := string(v)
		var str string
		if json.Unmarshal(v, &str) == nil {
			val = str
			if str == "" || strings.ContainsAny(str, " \t\"'=") {
				val = strconv.Quote(str)
			}
		} else if len(v) > 0 && (v[0] == '{' || v[0] == '[') {
			var b bytes.Buffer
			if json.Compact(&b, v) == nil {
				val = b.String()
			}
		}
		parts = append(parts, key+"="+val)
	}
	return strings.Join(parts, " ")
}
