package docker

import (
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
)

func ev(id string, a events.Action, at time.Time, attrs map[string]string) events.Message {
	return events.Message{Action: a, Actor: events.Actor{ID: id, Attributes: attrs}, TimeNano: at.UnixNano()}
}

// A create event's inspect runs beside the stream: the events that come
// meanwhile are applied to what the event told, and again on top of what
// the inspect returns; a birth destroyed before its inspect is back is
// not reported (nor forgotten) until it is, and holds the checkpoint.
func TestBirthInspectedBesideTheStream(t *testing.T) {
	id := "c0ffee" + "0000000000000000000000000000000000000000000000000000000000"
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	st := newStore()
	st.primed = true
	create := ev(id, events.ActionCreate, t0, map[string]string{"name": "job", "image": "img", "ds01.user": "alice"})
	b := &birth{c: fromEvent(create), at: t0, event: t0, inspecting: true}
	st.event(create, b)
	st.event(ev(id, events.ActionStart, t0.Add(time.Second), nil), nil)
	st.event(ev(id, events.ActionDie, t0.Add(2*time.Second), map[string]string{"exitCode": "3"}), nil)
	st.event(ev(id, events.ActionDestroy, t0.Add(3*time.Second), nil), nil)
	st.handled = t0.Add(3 * time.Second)

	snap, ok := st.commitChanges(st.begin(), map[string]*Container{id: nil}, t0.Add(4*time.Second))
	if !ok || len(snap.Ephemeral) != 0 {
		t.Fatalf("reported before its inspect came back: %+v", snap.Ephemeral)
	}
	if st.births[id] != b || !snap.Checkpoint.Before(t0) {
		t.Fatalf("birth kept %v, checkpoint %v: a restart now must replay the create", st.births[id] == b, snap.Checkpoint)
	}

	// The inspect saw it created, with its GPU request: that stands, and
	// the start and die since are applied on top.
	if !st.inspected(b, &Container{ID: id, Name: "job", Status: "created", Labels: map[string]string{"ds01.user": "alice"}, DeviceRequests: []DeviceRequest{{Driver: "nvidia", Count: -1}}}) {
		t.Fatal("a destroyed birth's inspect did not ask for the scan that reports it")
	}
	snap, ok = st.commitChanges(st.begin(), nil, t0.Add(5*time.Second))
	if !ok || len(snap.Ephemeral) != 1 {
		t.Fatalf("ephemeral after the inspect: %+v", snap.Ephemeral)
	}
	c := snap.Ephemeral[0]
	if len(c.DeviceRequests) != 1 || c.Status != "exited" || c.ExitCode != 3 || !c.StartedAt.Equal(t0.Add(time.Second)) ||
		!c.FinishedAt.Equal(t0.Add(2*time.Second)) || !c.Gone.Equal(t0.Add(3*time.Second)) {
		t.Fatalf("ephemeral: %+v", c)
	}
	if _, ok := st.births[id]; ok {
		t.Fatal("birth kept after it was reported")
	}

	// An inspect that comes back after a scan listed the container (the
	// normal diff took over) changes nothing; one that failed leaves what
	// the events told.
	id2 := "beef" + id[4:]
	b2 := &birth{c: fromEvent(ev(id2, events.ActionCreate, t0, nil)), at: t0, event: t0, inspecting: true}
	st.event(ev(id2, events.ActionCreate, t0, nil), b2)
	st.put(&Container{ID: id2, Status: "created"}, "created", "")
	st.commitChanges(st.begin(), nil, t0.Add(6*time.Second))
	if st.inspected(b2, &Container{ID: id2, Status: "running"}) {
		t.Error("a settled birth's late inspect asked for a scan")
	}
	if _, ok := st.births[id2]; ok || b2.inspecting {
		t.Fatalf("a listed container's late inspect: birth %v, inspecting %v", ok, b2.inspecting)
	}
	id3 := "dead" + id[4:]
	b3 := &birth{c: fromEvent(ev(id3, events.ActionCreate, t0, map[string]string{"name": "short"})), at: t0, event: t0, inspecting: true}
	st.event(ev(id3, events.ActionCreate, t0, nil), b3)
	st.event(ev(id3, events.ActionDestroy, t0.Add(time.Second), nil), nil)
	if !st.inspected(b3, nil) {
		t.Error("a destroyed birth whose inspect failed did not ask for a scan")
	}
	snap, _ = st.commitChanges(st.begin(), map[string]*Container{id3: nil}, t0.Add(7*time.Second))
	if len(snap.Ephemeral) != 1 || snap.Ephemeral[0].Name != "short" {
		t.Fatalf("a birth whose inspect failed: %+v", snap.Ephemeral)
	}
}
