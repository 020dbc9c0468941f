// Package deliver is the last step of a scan: it writes the state file,
// carrying the event lines about to be appended, then appends those lines to
// the event log. Lines that could not be appended stay queued and go out
// with the next delivery.
//
// The order gives exactly-once delivery across crashes: a crash between the
// state write and the append leaves the lines in the state file, and the
// next start (Open) queues those the log does not hold yet. If the state
// cannot be written the lines are appended anyway (at least once). A write
// failure is logged once when it starts or changes kind, and once when it
// ends, not every cycle. docs/FAULTS.md has the whole guarantee.
package deliver

import (
	"errors"
	"os"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/eventlog"
	"github.com/ds01/ds01-detectord/internal/safefile"
	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// The queue of lines waiting for the event log is capped: past either cap
// the oldest lines are dropped (counted and logged once), so an event log
// that stays unwritable cannot grow the state file and each cycle's
// rewrite without bound. docs/FAULTS.md says what the guarantee becomes.
const (
	MaxPendingLines = 10000
	MaxPendingBytes = 8 << 20
)

// Config names the two files.
type Config struct {
	StatePath  string
	EventsPath string
	// StateGroup, when set, makes the state file 0640 root:StateGroup.
	StateGroup string
	// Key, when set, seals every event line and the state file
	// (internal/seal), and a state file whose seal fails is not trusted.
	Key *seal.Key
	// KeyCreated says the key was made at this start: the state file
	// predates sealing and is trusted this once.
	KeyCreated bool
}

// Sink delivers states and event lines. One goroutine at a time.
type Sink struct {
	cfg     Config
	log     *zap.Logger
	pending [][]byte // encoded event lines not yet appended
	enc     statefile.Encoder
	head    seal.Head // the seal chain's end: the last line sealed

	// the kind of the last failure of each write, "" when it worked
	stateErr, eventsErr string
	dropping            bool // lines are being dropped (logged once)
}

// Result is what one delivery achieved.
type Result struct {
	Pending   int   // lines still waiting for the event log
	Dropped   int   // lines dropped this time: the queue was over its cap
	StateErr  error // the state write failed
	AppendErr error // the append failed (Pending lines are kept)
}

// Open loads the last state from the state file and queues the lines it
// recorded that the event log does not hold. A corrupt state file is moved
// aside and logged; Open then starts from an empty state and never fails.
func Open(cfg Config, log *zap.Logger) (*Sink, inventory.State) {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Sink{cfg: cfg, log: log}
	// Something other than a regular file at either path (a FIFO, a
	// symlink, a directory) was put there by someone else: say so once
	// now; the writes keep failing quietly with the same kind of error
	// until it is gone, and the in-memory state is kept meanwhile.
	for _, p := range []struct {
		what, path string
		kind       *string
	}{{"state file write", cfg.StatePath, &s.stateErr}, {"event log append", cfg.EventsPath, &s.eventsErr}} {
		if err := safefile.Lcheck(p.path); err != nil {
			log.Error(p.what+" impossible; will retry every cycle", zap.String("path", p.path), zap.Error(err))
			*p.kind = errKind(err)
		}
	}
	s.enc.Key = cfg.Key
	st, sealErr, err := statefile.LoadSealed(cfg.StatePath, cfg.Key)
	if err != nil && !errors.Is(err, safefile.ErrNotRegular) {
		log.Warn("state file not loaded", zap.String("path", cfg.StatePath), zap.Error(err))
	}
	statefile.CleanTemps(cfg.StatePath)
	if sealErr != nil {
		switch {
		case errors.Is(sealErr, statefile.ErrLegacyUnsealed):
			// The Python scanner's state: adopted once, as before sealing.
		case cfg.KeyCreated && errors.Is(sealErr, seal.ErrUnsealed):
			log.Info("the state file predates sealing (the key is new): trusted this once", zap.String("path", cfg.StatePath))
		default:
			// Written by someone else, or changed since: nothing in it is
			// used (no event, counter or checkpoint comes from it). It is
			// kept aside for the admin.
			aside := cfg.StatePath + ".untrusted-" + time.Now().UTC().Format("20060102T150405Z")
			if os.Rename(cfg.StatePath, aside) != nil {
				aside = ""
			}
			log.Error("state file not trusted: its seal does not verify; starting from Docker and NVML alone",
				zap.String("path", cfg.StatePath), zap.String("moved_to", aside), zap.Error(sealErr))
			st = inventory.Empty()
		}
	}
	if cfg.Key != nil {
		s.head = s.chainHead(st)
	}
	s.recover(st.UnloggedEvents)
	st.UnloggedEvents = nil
	st.SealHead = ""
	return s, st
}

// chainHead finds where the seal chain goes on: the head the trusted state
// recorded, else the last sealed line at the end of the event log whose
// seal verifies, else a new chain.
func (s *Sink) chainHead(st inventory.State) seal.Head {
	if h, ok := seal.ParseHead(st.SealHead); ok {
		return h
	}
	h, _ := eventlog.Log{Path: s.cfg.EventsPath}.LastSealed(s.cfg.Key)
	return h
}

// Load reads the last state without taking over its files: for --dry-run.
func Load(path string, log *zap.Logger) inventory.State {
	st, err := inventory.Read(path)
	if err != nil {
		log.Warn("state file not loaded", zap.String("path", path), zap.Error(err))
		return inventory.Empty()
	}
	st.UnloggedEvents = nil
	return st
}

// recover queues the lines the last run recorded in its state but may not
// have appended: those the log does not hold. A line that is not a
// well-formed event is dropped and logged: the state file's directory is
// writable by others, and the daemon appends as root.
func (s *Sink) recover(unlogged []string) {
	var valid []string
	dropped := 0
	for _, l := range unlogged {
		if _, err := event.Decode([]byte(l)); err != nil || len(l) > event.MaxLineBytes+seal.MaxLineOverhead {
			dropped++
			continue
		}
		valid = append(valid, l)
	}
	if dropped > 0 {
		s.log.Warn("state file carried unlogged lines that are not events; dropped", zap.Int("dropped", dropped))
	}
	switch cut, ended, err := (eventlog.Log{Path: s.cfg.EventsPath}).RepairTornTail(valid); {
	case err != nil:
		s.log.Warn("cannot check the end of the event log for a torn line", zap.String("path", s.cfg.EventsPath), zap.Error(err))
	case cut > 0:
		s.log.Warn("event log ended in part of a line the last run was writing when it was killed; cut it, the whole line follows",
			zap.String("path", s.cfg.EventsPath), zap.Int("bytes", cut))
	case ended:
		s.log.Warn("event log ended in part of a line that is not this daemon's; ended it with a newline so that ours start on their own line",
			zap.String("path", s.cfg.EventsPath))
	}
	missing, err := eventlog.Log{Path: s.cfg.EventsPath}.Missing(valid)
	if err != nil {
		s.log.Warn("cannot check the event log for unlogged events; appending them", zap.Error(err))
	}
	for _, l := range missing {
		s.pending = append(s.pending, []byte(l))
	}
	if len(missing) > 0 {
		s.log.Info("appending events the last run recorded but did not log", zap.Int("events", len(missing)))
	}
}

// Deliver writes st, carrying the queued lines and lines, then appends the
// lines. It never fails as a whole: what could not be written is reported
// and retried on the next call.
func (s *Sink) Deliver(st inventory.State, lines [][]byte) Result {
	if s.cfg.Key != nil {
		for _, l := range lines {
			var sealed []byte
			sealed, s.head = s.cfg.Key.SealLine(l, s.head)
			s.pending = append(s.pending, sealed)
		}
		st.SealHead = s.head.String()
	} else {
		s.pending = append(s.pending, lines...)
	}
	dropped := s.trim()
	st.UnloggedEvents = make([]string, 0, len(s.pending))
	for _, l := range s.pending {
		st.UnloggedEvents = append(st.UnloggedEvents, string(l))
	}
	if len(st.UnloggedEvents) == 0 {
		st.UnloggedEvents = nil
	}
	serr := statefile.SaveWith(&s.enc, s.cfg.StatePath, st, s.cfg.StateGroup)
	s.stateErr = s.noteErr("state file write", serr, s.stateErr, zap.String("path", s.cfg.StatePath))
	n, aerr := eventlog.Log{Path: s.cfg.EventsPath}.Append(s.pending)
	s.pending = s.pending[n:]
	if len(s.pending) == 0 {
		s.pending = nil
	}
	s.eventsErr = s.noteErr("event log append", aerr, s.eventsErr, zap.String("path", s.cfg.EventsPath), zap.Int("pending_events", len(s.pending)))
	return Result{Pending: len(s.pending), Dropped: dropped, StateErr: serr, AppendErr: aerr}
}

// trim drops the oldest queued lines past the caps and returns how many.
func (s *Sink) trim() int {
	size := 0
	for _, l := range s.pending {
		size += len(l) + 1
	}
	n := 0
	for len(s.pending)-n > MaxPendingLines || size > MaxPendingBytes {
		size -= len(s.pending[n]) + 1
		n++
	}
	switch {
	case n > 0 && !s.dropping:
		s.log.Error("event log unwritable for too long: dropping the oldest unwritten events", zap.Int("dropped", n),
			zap.Int("max_pending_lines", MaxPendingLines), zap.Int("max_pending_bytes", MaxPendingBytes))
		s.dropping = true
	case n == 0 && s.dropping && len(s.pending) < MaxPendingLines/2:
		s.log.Info("unwritten events back under the cap; no longer dropping")
		s.dropping = false
	}
	s.pending = s.pending[n:]
	return n
}

// noteErr logs a write failure when it starts or its kind changes (disk
// full, then read-only, say) and a recovery when it ends, and returns the
// remembered kind. The kind is the system error when there is one, since
// the full text names a fresh temporary file every time.
func (s *Sink) noteErr(what string, err error, last string, fields ...zap.Field) string {
	switch {
	case err == nil && last != "":
		s.log.Info(what+" recovered", fields...)
		return ""
	case err == nil:
		return ""
	}
	kind := errKind(err)
	if kind != last {
		s.log.Error(what+" failed; will retry every cycle", append(fields, zap.Error(err))...)
	}
	return kind
}

func errKind(err error) string {
	if errors.Is(err, safefile.ErrNotRegular) {
		return safefile.ErrNotRegular.Error()
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}
