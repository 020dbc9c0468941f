// Package transition is the reconcile step's output unit: one change of
// state to report, as data. The cycle package writes each to the event log
// and gives it one journal line.
package transition

import "time"

// Transition is one change to report: the event log's line (its type, its
// user and its details).
type Transition struct {
	EventType string
	User      string // the envelope's user
	Details   any    // one of pkg/event's *Details types
	// At is when it happened, when that is known better than the scan's
	// time (a container replayed from Docker's event history); zero: now.
	At time.Time
}
