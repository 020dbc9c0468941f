package report

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/ds01/ds01-detectord/internal/asciijson"
	"github.com/ds01/ds01-detectord/internal/view"
	"github.com/ds01/ds01-detectord/pkg/event"
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

// EventFilter selects event lines.
type EventFilter struct {
	Since, Until time.Time // zero: open
	TypePrefix   string
	User         string
}

// Match compares times as times, the type as a prefix, the user exactly.
func (f EventFilter) Match(e event.Envelope) bool {
	if !f.Since.IsZero() && e.Timestamp.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && e.Timestamp.After(f.Until) {
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
	Style  view.Style
	header bool
}

// Print writes one event.
func (p *EventPrinter) Print(e event.Envelope) {
	if p.JSON {
		// Re-encoded, never copied: the file is group-writable, and its
		// bytes must not reach the terminal as they are. The output is
		// ASCII only (\uXXXX escapes), one object per line.
		b, err := asciijson.Marshal(e, "")
		if err != nil {
			return
		}
		p.Out.Write(append(b, '\n'))
		return
	}
	if !p.header {
		fmt.Fprintf(p.Out, "%s\n", p.Style.Bold(fmt.Sprintf("%-27s %-40s %-16s %s", "TIMESTAMP", "EVENT TYPE", "USER", "DETAILS")))
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
	fmt.Fprintf(p.Out, "%-27s %-40s %-16s %s\n", e.Timestamp.String(), view.Cut(e.EventType, 40), view.Cut(user, 16), view.Cut(details, room))
}

// ReadEvents prints the matching events of the log (not its archives),
// the last limit of them when limit > 0. It returns how many were printed
// and the offset it read up to: a partial last line is left for Follow.
func ReadEvents(path string, f EventFilter, limit int, p *EventPrinter) (int, int64, error) {
	var keep []event.Envelope
	var off int64
	for e, err := range (event.Reader{Path: path}).Events(context.Background()) {
		var notEvent *event.LineError
		if err != nil && !errors.As(err, &notEvent) {
			return 0, 0, err
		}
		if e.Pos.Partial {
			break
		}
		off = e.Pos.End
		if err == nil && f.Match(e) {
			keep = append(keep, e)
			if limit > 0 && len(keep) > limit {
				keep = keep[1:]
			}
		}
	}
	for _, e := range keep {
		p.Print(e)
	}
	return len(keep), off, nil
}

// Follow prints matching lines appended after offset until ctx ends,
// following logrotate (event.Reader's Follow).
func Follow(ctx context.Context, path string, offset int64, f EventFilter, p *EventPrinter, poll time.Duration) {
	for e, err := range (event.Reader{Path: path, Offset: offset, Follow: true, Poll: poll}).Events(ctx) {
		if err == nil && f.Match(e) {
			p.Print(e)
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
