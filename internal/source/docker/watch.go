package docker

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"go.uber.org/zap"
)

// maxReplay bounds how far back a restarted daemon asks Docker to replay
// events (dockerd keeps only recent ones in memory anyway).
const maxReplay = time.Hour

// watchedActions are the container events that change what a scan reports.
var watchedActions = []events.Action{
	events.ActionCreate, events.ActionStart, events.ActionDie, events.ActionDestroy,
	events.ActionRename, events.ActionUpdate, events.ActionPause, events.ActionUnPause,
}

// Watch follows Docker's container events until ctx ends. Each event
// invalidates that container's cache entry and calls changed, which should
// schedule a (debounced) scan. A create event also inspects the container
// (beside the stream, see handle), so that one destroyed before the next
// scan is still reported (see Snapshot.Ephemeral). When the stream breaks
// (a dockerd restart, say), Watch reconnects with backoff from its last
// checkpoint, drops the cache, and calls changed so that the next scan
// lists everything again.
//
// from is the checkpoint of the last run (the state file's
// docker_events_since): when it is recent, the first subscription replays
// the events after it, so containers created and removed while the daemon
// was down are still reported. Otherwise the stream starts now.
func (s *Source) Watch(ctx context.Context, from time.Time, changed func(), log *zap.Logger) {
	f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)))
	for _, a := range watchedActions {
		f.Add("event", string(a))
	}
	// since is the checkpoint: the time of the last event handled. The
	// first subscription starts now (the first scan covers the past); a
	// reconnection asks Docker to replay what came after the checkpoint,
	// and events at or before it are skipped, so none is handled twice.
	since := time.Now()
	if !from.IsZero() && since.Sub(from) < maxReplay {
		since = from
	}
	backoff := 100 * time.Millisecond
	down := false
	for ctx.Err() == nil {
		if _, _, err := s.runtimeInfo(ctx); err != nil { // is the daemon there at all?
			if !down {
				log.Warn("docker event stream down; scans fall back to the interval", zap.Error(err))
				down = true
			}
			sleep(ctx, backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		replayedUpTo := since // events at or before it were handled already
		msgs, errs := s.cli.Events(sctx, events.ListOptions{Since: fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()), Filters: f})
		s.do(func(st *store) { st.reset(true) })
		if down {
			log.Info("docker event stream reconnected")
			down = false
		}
		changed() // relist: something may have happened while we were away
		backoff = 100 * time.Millisecond
	stream:
		for {
			select {
			case m := <-msgs:
				if m.TimeNano > 0 {
					t := time.Unix(0, m.TimeNano)
					if replayed(t, replayedUpTo) {
						continue // replayed, already handled
					}
					if t.After(since) { // events may come slightly out of order
						since = t
					}
				}
				s.handle(ctx, m, since, changed)
				changed()
			case err := <-errs:
				if ctx.Err() == nil {
					log.Warn("docker event stream broke; reconnecting", zap.Error(err))
					down = true
				}
				break stream
			}
		}
		cancel()
		s.do(func(st *store) { st.reset(false) })
		sleep(ctx, backoff)
	}
}

// replayed reports whether an event of time t, received on a subscription
// that asked Docker to replay from upTo, is one handled already. Docker
// replays the events at or after upTo, and every event handled before was
// at or before it: only one exactly at upTo can be a repeat. An event
// before upTo is live, stamped by a wall clock that stepped back; it is
// handled, not dropped.
func replayed(t, upTo time.Time) bool { return t.Equal(upTo) }

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// handle records one event: the container it names is inspected again by
// the next scan. A create event records what the event tells at once and
// starts an inspect of the container beside the stream (inspectBirth), so
// that one destroyed before the next scan is still reported with what
// only an inspect tells (its GPU configuration). Beside, not in line: an
// inspect made while dockerd starts the container waits for the start
// (100-300 ms), and in line it held up every event after it, so under a
// sweep's churn the stream fell seconds behind. The checkpoint moves to at
// once the event is recorded.
func (s *Source) handle(ctx context.Context, m events.Message, at time.Time, changed func()) {
	id := m.Actor.ID
	var b *birth
	if id != "" && m.Action == events.ActionCreate {
		b = &birth{c: fromEvent(m), at: time.Now(), event: time.Unix(0, m.TimeNano), inspecting: true}
	}
	s.do(func(st *store) {
		if id != "" {
			st.event(m, b)
		}
		st.handled = at
	})
	if b != nil {
		s.inspectBirth(ctx, id, b, changed)
	}
}

// inspectBirth inspects a container the stream saw created and gives the
// store what it found (store.inspected). When the container was destroyed
// meanwhile, a scan that came first left its birth to be reported: it
// asks for one. At most cap(birthInspects) are in flight; past that the
// stream waits.
func (s *Source) inspectBirth(ctx context.Context, id string, b *birth, changed func()) {
	select {
	case s.birthInspects <- struct{}{}:
	case <-ctx.Done():
		s.do(func(st *store) { st.inspected(b, nil) })
		return
	}
	go func() {
		defer func() { <-s.birthInspects }()
		var c *Container
		if rts, defRT, err := s.runtimeInfo(ctx); err == nil {
			c, _ = s.inspect(ctx, id, rts, defRT) // gone or failing: what the events told stands
		}
		report := false
		s.do(func(st *store) { report = st.inspected(b, c) })
		if report {
			changed()
		}
	}()
}

// event marks the container an event names for the next scan, and keeps
// the last status of one the stream saw created; b is the birth a create
// event records.
func (st *store) event(m events.Message, b *birth) {
	id := m.Actor.ID
	st.dirty[id] = true
	if b != nil {
		if old, ok := st.births[id]; ok && old.destroyed {
			b.destroyed = true
		}
		st.births[id] = b
		return
	}
	b, ok := st.births[id]
	if !ok {
		return
	}
	if m.Action == events.ActionDestroy {
		b.destroyed, b.gone = true, time.Unix(0, m.TimeNano)
		return
	}
	applyEvent(&b.c, m)
	if b.inspecting {
		if len(b.later) == maxLater {
			b.later = slices.Delete(b.later, 0, 1)
		}
		b.later = append(b.later, m)
	}
}

// inspected takes a birth's inspect (nil: none came back): what it says,
// with the events since the create applied again on top. It reports
// whether the birth is now waiting for a scan to report it (destroyed).
func (st *store) inspected(b *birth, c *Container) bool {
	later := b.later
	b.inspecting, b.later = false, nil
	if st.births[b.c.ID] != b {
		return false // settled by a scan meanwhile
	}
	if c != nil { // nil: failed, what the events told stands
		b.c = *c
		for _, m := range later {
			applyEvent(&b.c, m)
		}
	}
	return b.destroyed
}

// applyEvent sets what a start, die, pause or unpause event says of a
// container's state.
func applyEvent(c *Container, m events.Message) {
	at := time.Unix(0, m.TimeNano)
	switch m.Action {
	case events.ActionStart, events.ActionUnPause:
		c.Status = "running"
		if m.Action == events.ActionStart {
			c.StartedAt = at
		}
	case events.ActionDie:
		c.Status, c.Pid, c.FinishedAt = "exited", 0, at
		if code, err := strconv.Atoi(m.Actor.Attributes["exitCode"]); err == nil {
			c.ExitCode = code
		}
	case events.ActionPause:
		c.Status = "paused"
	}
}

// fromEvent builds what an event tells about a container (its name, image
// and labels), for one that is gone before it could be inspected.
func fromEvent(m events.Message) Container {
	labels := map[string]string{}
	name, image := "", ""
	for k, v := range m.Actor.Attributes {
		switch k {
		case "name":
			name = v
		case "image":
			image = v
		default:
			labels[k] = v
		}
	}
	return Container{
		ID: m.Actor.ID, Name: strings.TrimPrefix(name, "/"), Image: shortImage(image, ""),
		Status: "created", Created: time.Unix(0, m.TimeNano),
		Labels: labels,
	}
}
