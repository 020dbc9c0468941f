package docker

import (
	"errors"
	"slices"
	"time"
)

// The source's inventory is an informer's store, as in client-go: one
// goroutine (run) owns it, and everything else (List, the event stream)
// hands it requests through do. A request only reads or changes memory:
// every Docker API call is made outside, by the caller, so a slow daemon
// never holds up the store. What the store hands out is immutable: the
// containers of a snapshot are shared with the store and with later
// snapshots, never changed in place (a new inspect is a new *Container,
// and the list of them is copied before a change once a snapshot holds
// it).

// errClosed is List's error once the source is closed.
var errClosed = errors.New("docker source closed")

// store is the inventory. Only the goroutine of run touches it.
type store struct {
	// items are the containers of the last snapshot, in the last list's
	// order (an event scan appends new ones and moves the last into a
	// removed one's place); index says where each one is, and with which
	// list state and name it was inspected. Both change only through put
	// and drop, so they always hold the same containers.
	items []*Container
	// shared: items is a snapshot's too, and is copied before a change.
	shared bool
	index  map[string]entry
	// dirty are the IDs the events named since the last list.
	dirty map[string]bool
	// trusted: the event stream is connected, so a container it did not
	// name is unchanged, and the inspect cache may be used (a container's
	// labels and GPU configuration do not change during its life; only
	// the stream tells about a restart between two scans, or an update).
	trusted bool
	// primed: a full list has completed since the stream (re)connected, so
	// items plus the events since hold every container: an event scan
	// may then inspect only what the events named.
	primed bool
	// gen counts resets: a list primes, and changes, only the store it
	// began with.
	gen     uint64
	births  map[string]*birth // containers the stream saw created (see Ephemeral)
	handled time.Time         // time of the last event handled: the checkpoint

	runtimes   map[string]string // name → binary path
	defaultRT  string
	runtimesAt time.Time
}

type entry struct {
	pos   int    // in items
	state string // list summary State when inspected
	name  string
}

func newStore() *store {
	return &store{index: map[string]entry{}, dirty: map[string]bool{}, births: map[string]*birth{}}
}

// run serves the store's requests until stop closes.
func run(st *store, reqs <-chan func(*store), stop <-chan struct{}) {
	for {
		select {
		case f := <-reqs:
			f(st)
		case <-stop:
			return
		}
	}
}

// do runs f on the store's goroutine and waits for it. It returns false,
// without running f, once the source is closed.
func (s *Source) do(f func(*store)) bool {
	done := make(chan struct{})
	select {
	case s.reqs <- func(st *store) { f(st); close(done) }:
	case <-s.stop:
		return false
	}
	<-done
	return true
}

// batch is what a scan takes from the store when it begins.
type batch struct {
	dirty           map[string]bool // the events' IDs, now the scan's
	trusted, primed bool
	gen             uint64
}

// begin hands a scan the IDs the events named since the last one.
func (st *store) begin() batch {
	b := batch{dirty: st.dirty, trusted: st.trusted, primed: st.primed, gen: st.gen}
	st.dirty = map[string]bool{}
	return b
}

// undo gives a failed scan's IDs back, for the next try.
func (st *store) undo(b batch) {
	for id := range b.dirty {
		st.dirty[id] = true
	}
}

// cached returns the container the list summary describes, as inspected
// before, when it can be reused: the stream was connected all along, no
// event named it, and its state and name are the ones it was inspected
// with.
func (st *store) cached(b batch, id, state, name string) *Container {
	e, ok := st.index[id]
	if !b.trusted || b.gen != st.gen || !ok || b.dirty[id] || e.state != state || e.name != name {
		return nil
	}
	return st.items[e.pos]
}

// listed is one container of a list, inspected now or reused.
type listed struct {
	c           *Container // nil: removed before its inspect
	state, name string
}

// commitList makes a full list the inventory and returns its snapshot.
func (st *store) commitList(b batch, list []listed, listStart time.Time) Snapshot {
	items := make([]*Container, 0, len(list))
	for _, l := range list {
		if l.c != nil {
			items = append(items, l.c)
		}
	}
	snap := Snapshot{Containers: items}
	if b.gen != st.gen {
		// The stream reconnected during the list: the store was reset,
		// and this list, whose reused containers predate that, is not
		// kept. The next scan lists again.
		ids := make(map[string]bool, len(items))
		for _, c := range items {
			ids[c.ID] = true
		}
		st.finish(&snap, listStart, func(id string) bool { return ids[id] })
		return snap
	}
	st.items, st.shared = items, true
	n := 0
	for _, l := range list {
		if l.c != nil {
			st.index[l.c.ID] = entry{pos: n, state: l.state, name: l.name}
			n++
		}
	}
	for id, e := range st.index { // the containers no longer listed
		if e.pos >= len(items) || items[e.pos].ID != id {
			delete(st.index, id)
		}
	}
	if b.trusted && st.trusted {
		st.primed = true
	}
	st.finish(&snap, listStart, st.has)
	return snap
}

// commitChanges applies an event scan's inspects (nil: removed) and
// returns its snapshot. It returns false when the store was reset since
// the scan began: the scan must list instead.
func (st *store) commitChanges(b batch, got map[string]*Container, start time.Time) (Snapshot, bool) {
	if b.gen != st.gen || !st.primed {
		return Snapshot{}, false
	}
	for id, c := range got {
		if c == nil {
			st.drop(id)
		} else {
			st.put(c, c.Status, c.Name)
		}
	}
	snap := Snapshot{Containers: st.items, Incremental: true, Changed: b.dirty}
	st.shared = true
	st.finish(&snap, start, st.has)
	return snap, true
}

func (st *store) has(id string) bool { _, ok := st.index[id]; return ok }

// own makes items the store's alone before a change.
func (st *store) own() {
	if st.shared {
		st.items, st.shared = slices.Clone(st.items), false
	}
}

// put records an inspected container, with the state and name it was
// inspected with.
func (st *store) put(c *Container, state, name string) {
	st.own()
	if e, ok := st.index[c.ID]; ok {
		st.items[e.pos] = c
		st.index[c.ID] = entry{pos: e.pos, state: state, name: name}
		return
	}
	st.index[c.ID] = entry{pos: len(st.items), state: state, name: name}
	st.items = append(st.items, c)
}

// drop forgets a removed container: the last one of items takes its
// place.
func (st *store) drop(id string) {
	e, ok := st.index[id]
	if !ok {
		return
	}
	st.own()
	delete(st.index, id)
	last := len(st.items) - 1
	if e.pos != last {
		moved := st.items[last]
		st.items[e.pos] = moved
		m := st.index[moved.ID]
		m.pos = e.pos
		st.index[moved.ID] = m
	}
	st.items[last] = nil
	st.items = st.items[:last]
}

// reset empties the inventory (and forgets the runtimes) when the stream
// connects or breaks, and says whether the cache may be used from now on.
func (st *store) reset(trusted bool) {
	st.items, st.shared = nil, false
	st.index = map[string]entry{}
	st.runtimes = nil
	st.trusted = trusted
	st.primed = false
	st.gen++
}

// finish sets the snapshot's checkpoint and ephemeral containers from the
// event stream's record; listed says which containers it lists.
func (st *store) finish(snap *Snapshot, listStart time.Time, listed func(string) bool) {
	snap.ListStart = listStart
	if !st.handled.IsZero() {
		// Docker may publish events slightly out of order: hold the
		// checkpoint back so a late one is replayed rather than skipped.
		snap.Checkpoint = st.handled.Add(-reorderMargin)
	}
	for id, b := range st.births {
		switch {
		case listed(id):
			delete(st.births, id) // the scan saw it; the normal diff takes over
			continue
		case b.inspecting:
			// Destroyed or not, its inspect is still on its way: a later
			// scan (the inspect asks for one) reports it with what the
			// inspect found.
		case b.destroyed:
			c := b.c
			c.Gone = b.gone
			snap.Ephemeral = append(snap.Ephemeral, c)
			delete(st.births, id)
			continue
		case b.at.Before(listStart.Add(-time.Minute)):
			delete(st.births, id) // never listed, never destroyed: stale
			continue
		}
		if !b.event.IsZero() && !b.event.After(snap.Checkpoint) {
			// Not reflected yet: a restart must replay its creation.
			snap.Checkpoint = b.event.Add(-time.Nanosecond)
		}
	}
}
