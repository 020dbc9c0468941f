//go:build integration

package cycle

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/source/docker"
	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
)

// watch runs the event stream of src until the test ends and returns a
// channel that gets a value per change.
func watch(t *testing.T, src *docker.Source) <-chan struct{} {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan struct{}, 1000)
	go src.Watch(ctx, time.Time{}, func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}, zap.NewNop())
	return ch
}

func drain(ch <-chan struct{}) int {
	n := 0
	for {
		select {
		case <-ch:
			n++
		default:
			return n
		}
	}
}

func waitChange(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no change notification: %s", what)
	}
}

func eventKinds(t *testing.T, evs []event.Envelope) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.EventType+" "+testutil.Details(t, e)["container_id"].(string))
	}
	return out
}

func TestShortLivedContainerBetweenTicks(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	r := newRig(t, d)
	changes := watch(t, r.src)
	waitChange(t, changes, "stream connected")
	r.cycle()
	r.NewEvents()

	ctx := context.Background()
	before := time.Now()
	id, err := d.Create(ctx, dockertest.Spec{Name: "blink", Labels: map[string]string{"ds01.user": "alice"}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	time.Sleep(2 * time.Second) // it lives 2 s, between two ticks
	removing := time.Now()
	if err := d.Client.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	// Let the destroy event arrive.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		drain(changes)
		time.Sleep(300 * time.Millisecond)
		if drain(changes) == 0 {
			break
		}
	}
	time.Sleep(time.Second)
	r.cycle()
	evs := r.NewEvents()
	got := eventKinds(t, evs)
	want := []string{event.ContainerDiscovered + " " + id[:12], event.ContainerExited + " " + id[:12]}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	// Docker's own times and the last status the events told, not the
	// scan's time and "created".
	const slack = 50 * time.Millisecond // Docker's clock is this machine's; its events are stamped in ns
	if at := evs[0].Timestamp.Time; at.Before(before.Add(-slack)) || at.After(created.Add(slack)) {
		t.Errorf("discovered stamped %v, want between %v and %v", at, before, created)
	}
	if at := evs[1].Timestamp.Time; at.Before(removing.Add(-slack)) || at.After(removed.Add(slack)) {
		t.Errorf("exited stamped %v, want between %v and %v", at, removing, removed)
	}
	if st := testutil.Details(t, evs[0])["status"]; st != "exited" {
		t.Errorf("discovered with status %v, want its last status, exited", st)
	}
	r.cycle()
	if evs := r.NewEvents(); len(evs) != 0 {
		t.Fatalf("repeated: %+v", evs)
	}
}

func TestSteadyCycleMakesOneRequest(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		if _, err := d.Create(ctx, dockertest.Spec{Name: "steady-" + string(rune('a'+i)), Start: i%2 == 0}); err != nil {
			t.Fatal(err)
		}
	}
	r, p, src, changes := proxiedRig(t, d)
	r.cycle() // cold: inspects everything
	r.cycle()
	p.Counts()
	before := src.Requests()
	for i := 0; i < 3; i++ {
		r.cycle()
	}
	got := p.Counts()
	if want := map[string]int{"GET /containers/json": 3}; !reflect.DeepEqual(got, want) {
		t.Fatalf("3 steady cycles made %v, want %v", got, want)
	}
	// The client's own count (exported as a metric) agrees with the proxy.
	after := src.Requests()
	for ep, n := range after {
		if d := n - before[ep]; d != 0 && !(ep == "GET /containers/json" && d == 3) {
			t.Errorf("client counted %d × %s", d, ep)
		}
	}
	if after["GET /containers/json"]-before["GET /containers/json"] != 3 {
		t.Errorf("client counted %v, then %v", before, after)
	}
	// A state change is re-inspected, and only that container.
	var running string
	for _, c := range r.State().Containers {
		if c.Status == "running" {
			running = c.FullID
		}
	}
	timeout := 1
	if err := d.Client.ContainerStop(ctx, running, container.StopOptions{Timeout: &timeout}); err != nil {
		t.Fatal(err)
	}
	waitChange(t, changes, "stop")
	p.Counts()
	r.cycle()
	if got := p.Counts(); got["GET /containers/"+running+"/json"] != 1 || got["GET /containers/json"] != 1 || len(got) != 2 {
		t.Fatalf("after a stop: %v", got)
	}
	if c := r.State().Containers[running[:12]]; c.Status != "exited" {
		t.Fatalf("stopped container shows %s", c.Status)
	}
}

// An event-triggered scan costs the inspects of the containers the events
// named, and no list call: creating, stopping and removing a container
// among many others makes no GET /containers/json, and each transition is
// reported once.
func TestEventScanMakesNoListCall(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	var idle0 string
	for i := 0; i < 20; i++ {
		id, err := d.Create(ctx, dockertest.Spec{Name: "idle-" + string(rune('a'+i))})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			idle0 = id
		}
	}
	r, p, _, changes := proxiedRig(t, d)
	r.cycle() // full: primes the inventory
	r.NewEvents()
	events := func(full bool) summary.Summary {
		drain(changes)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return r.det.Scan(ctx, full)
	}

	p.Counts()
	id, err := d.Create(ctx, dockertest.Spec{Name: "churn", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	waitChange(t, changes, "create") // the start may come later: the inspect sees it running
	if s := events(false); s.Containers != 21 {
		t.Fatalf("after create: %d containers", s.Containers)
	}
	timeout := 1
	if err := d.Client.ContainerStop(ctx, id, container.StopOptions{Timeout: &timeout}); err != nil {
		t.Fatal(err)
	}
	waitChange(t, changes, "stop")
	events(false)
	if err := d.Client.ContainerRemove(ctx, id, container.RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	waitChange(t, changes, "remove")
	if s := events(false); s.Containers != 20 {
		t.Fatalf("after remove: %d containers", s.Containers)
	}
	got := p.Counts()
	if got["GET /containers/json"] != 0 {
		t.Errorf("event scans listed: %v", got)
	}
	for ep := range got {
		if ep != "GET /containers/"+id+"/json" && ep != "GET /containers/json" {
			t.Errorf("a request about something else: %s", ep)
		}
	}
	if kinds := eventKinds(t, r.NewEvents()); !reflect.DeepEqual(kinds, []string{
		event.ContainerDiscovered + " " + id[:12], event.ContainerStatusChanged + " " + id[:12], event.ContainerExited + " " + id[:12]}) {
		t.Errorf("transitions: %v", kinds)
	}
	// An idle container renamed among the others: the event names it, so
	// it is inspected and classified again (the others' classification is
	// reused), still without a list call.
	if err := d.Client.ContainerRename(ctx, idle0, "renamed-idle"); err != nil {
		t.Fatal(err)
	}
	waitChange(t, changes, "rename")
	if s := events(false); s.State.Containers[idle0[:12]].Name != "renamed-idle" || s.Containers != 20 {
		t.Errorf("after a rename: %+v", s.State.Containers[idle0[:12]])
	}
	if got := p.Counts(); got["GET /containers/json"] != 0 || got["GET /containers/"+idle0+"/json"] != 1 {
		t.Errorf("the rename's scan: %v", got)
	}
	// The reconciliation scan still lists, and finds nothing new.
	p.Counts()
	if s := events(true); s.Events != 0 {
		t.Errorf("reconciliation found %d transitions", s.Events)
	}
	if got := p.Counts(); got["GET /containers/json"] != 1 {
		t.Errorf("reconciliation: %v", got)
	}
}

// proxiedRig is a scanner whose Docker source goes through a counting
// proxy, with the event stream connected.
func proxiedRig(t *testing.T, d *dockertest.Daemon) (*rig, *dockertest.Proxy, *docker.Source, <-chan struct{}) {
	t.Helper()
	p, err := d.Proxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	src, err := docker.New(p.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	r := &rig{Files: testutil.NewFiles(t), t: t, src: src}
	r.det = r.newScanner()
	changes := watch(t, src)
	waitChange(t, changes, "stream connected")
	return r, p, src, changes
}
