package docker

import (
	"testing"
	"time"
)

// The event times come from dockerd's wall clock. After it steps back an
// hour, live events are stamped before the replay checkpoint; they must
// still be handled. Only an event exactly at the checkpoint is a repeat.
func TestReplaySkipsOnlyTheHandledEvent(t *testing.T) {
	upTo := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	for _, tc := range []struct {
		name string
		at   time.Time
		skip bool
	}{
		{"the last handled event, replayed", upTo, true},
		{"a later event", upTo.Add(time.Nanosecond), false},
		{"a live event after the clock stepped back an hour", upTo.Add(-time.Hour), false},
		{"a live event a nanosecond before", upTo.Add(-time.Nanosecond), false},
	} {
		if got := replayed(tc.at, upTo); got != tc.skip {
			t.Errorf("%s: skipped=%v, want %v", tc.name, got, tc.skip)
		}
	}
}
