package docker

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// The store's items and the index that places each container in them
// agree through any mix of new, changed and removed containers, and a
// snapshot handed out is never changed by what follows.
func TestItemsMirrorIndex(t *testing.T) {
	st := newStore()
	st.primed = true
	rnd := rand.New(rand.NewPCG(3, 4))
	var snaps []Snapshot
	var frozen [][]string // each snapshot's IDs and names when handed out
	for step := 0; step < 2000; step++ {
		id := fmt.Sprintf("%064d", rnd.IntN(40))
		put := rnd.IntN(3) != 0
		if put {
			st.put(&Container{ID: id, Name: fmt.Sprint(step)}, "exited", "n")
		} else {
			st.drop(id)
		}
		if len(st.items) != len(st.index) {
			t.Fatalf("step %d: items %d, index %d", step, len(st.items), len(st.index))
		}
		for i, c := range st.items {
			if e, ok := st.index[c.ID]; !ok || e.pos != i {
				t.Fatalf("step %d: %s at %d, index says %+v (%v)", step, c.ID, i, e, ok)
			}
		}
		e, ok := st.index[id]
		switch {
		case put && (!ok || st.items[e.pos].Name != fmt.Sprint(step)):
			t.Fatalf("step %d: %s is not what was put last", step, id)
		case !put && ok:
			t.Fatalf("step %d: %s still there after drop", step, id)
		}
		if step%7 == 0 {
			snap, ok := st.commitChanges(batch{gen: st.gen}, nil, time.Now())
			if !ok {
				t.Fatal("commit refused")
			}
			snaps = append(snaps, snap)
			frozen = append(frozen, describe(snap))
		}
	}
	for i, snap := range snaps {
		if got := describe(snap); fmt.Sprint(got) != fmt.Sprint(frozen[i]) {
			t.Fatalf("snapshot %d changed after it was handed out", i)
		}
	}
}

func describe(s Snapshot) []string {
	var out []string
	for _, c := range s.Containers {
		out = append(out, c.ID[60:]+"="+c.Name)
	}
	return out
}

// A snapshot shares the containers the last one had: a steady scan copies
// none of them.
func TestSnapshotsShareUnchangedContainers(t *testing.T) {
	st := newStore()
	st.trusted = true
	var list []listed
	for i := 0; i < 5; i++ {
		list = append(list, listed{c: &Container{ID: fmt.Sprintf("%064d", i)}, state: "exited"})
	}
	first := st.commitList(batch{gen: st.gen, trusted: true}, list, time.Now())
	if !st.primed {
		t.Fatal("a trusted list did not prime the store")
	}
	again := st.begin()
	for i := range list {
		if c := st.cached(again, list[i].c.ID, "exited", ""); c != first.Containers[i] {
			t.Fatalf("container %d not reused", i)
		}
	}
	fresh := &Container{ID: list[2].c.ID, Name: "renamed"}
	next, ok := st.commitChanges(batch{gen: st.gen, dirty: map[string]bool{fresh.ID: true}}, map[string]*Container{fresh.ID: fresh}, time.Now())
	if !ok || !next.Incremental || !next.Changed[fresh.ID] || len(next.Changed) != 1 {
		t.Fatalf("event scan: %+v", next)
	}
	for i, c := range next.Containers {
		switch {
		case i == 2 && (c != fresh || first.Containers[2].Name != ""):
			t.Fatalf("the changed container: %+v; the first snapshot's: %+v", c, first.Containers[2])
		case i != 2 && c != first.Containers[i]:
			t.Fatalf("container %d copied", i)
		}
	}
	// A reset (the stream reconnected) between begin and commit: the
	// event scan must list instead.
	b := st.begin()
	st.reset(true)
	if _, ok := st.commitChanges(b, nil, time.Now()); ok {
		t.Fatal("an event scan committed into a reset store")
	}
}
