package service_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/detector"
	"github.com/ds01/ds01-detectord/internal/dockersrc"
	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/procfs"
	"github.com/ds01/ds01-detectord/internal/service"
	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/internal/userdb"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// These tests run the real loop (service.Run, the detector and Docker's
// event stream) against a private dockerd.

type daemonFiles struct {
	t        *testing.T
	dir      string
	consumed int
}

func (f *daemonFiles) state() inventory.State {
	f.t.Helper()
	st, err := statefile.Read(filepath.Join(f.dir, "state.json"))
	if err != nil {
		f.t.Fatalf("state file: %v", err)
	}
	return st
}

func (f *daemonFiles) newEvents() []event.Envelope {
	f.t.Helper()
	all, err := event.ReadLog(filepath.Join(f.dir, "events.jsonl"))
	if err != nil {
		f.t.Fatal(err)
	}
	out := all[min(f.consumed, len(all)):]
	f.consumed = len(all)
	return out
}

func details(t *testing.T, e event.Envelope) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(e.Details, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// runDaemon runs the real loop (service.Run with the event stream) in the
// test process until the test ends.
func runDaemon(t *testing.T, host string, interval time.Duration) (dir string) {
	dir = t.TempDir()
	src, err := dockersrc.New(host, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	det := detector.New(detector.Config{
		StatePath: filepath.Join(dir, "state.json"), EventsPath: filepath.Join(dir, "events.jsonl"),
		Docker: src, Proc: procfs.New("/proc"), Users: userdb.New(time.Minute).Lookup,
	})
	ctx, cancel := context.WithCancel(context.Background())
	changed, trigger := service.Debounce(50 * time.Millisecond)
	go src.Watch(ctx, time.Time{}, changed, zap.NewNop())
	done := make(chan struct{})
	go func() {
		service.Run(ctx, det, zap.NewNop(), service.Options{Interval: interval, ScanTimeout: 5 * time.Second, Trigger: trigger})
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done; src.Close() })
	return dir
}

func stateHas(dir, id string) bool {
	b, _ := os.ReadFile(filepath.Join(dir, "state.json"))
	return strings.Contains(string(b), `"`+id[:12]+`"`)
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v", what, limit)
}

func TestRelistFindsContainerCreatedWhileStreamWasDown(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	p, err := d.Proxy()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dir := runDaemon(t, p.Host, time.Hour) // no tick will help
	ctx := context.Background()
	first, err := d.Create(ctx, dockertest.Spec{Name: "before"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "container via the event stream", func() bool { return stateHas(dir, first) })

	p.Cut()
	time.Sleep(500 * time.Millisecond)
	hidden, err := d.Create(ctx, dockertest.Spec{Name: "while-down"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if stateHas(dir, hidden) {
		t.Fatal("container seen through a cut link")
	}
	p.Mend()
	waitFor(t, 15*time.Second, "container created while the stream was down", func() bool { return stateHas(dir, hidden) })
}

func TestDockerdKilledAndRestartedWhileRunning(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	ids := map[string]string{}
	for _, s := range []dockertest.Spec{
		{Name: "runs", Start: true},
		{Name: "created"},
		{Name: "always", Start: true, Host: container.HostConfig{RestartPolicy: container.RestartPolicy{Name: "always"}}},
	} {
		id, err := d.Create(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		ids[s.Name] = id
	}
	dir := runDaemon(t, d.Host, time.Second)
	r := &daemonFiles{t: t, dir: dir}
	waitFor(t, 10*time.Second, "all three in the state", func() bool {
		return stateHas(dir, ids["runs"]) && stateHas(dir, ids["created"]) && stateHas(dir, ids["always"])
	})
	time.Sleep(1500 * time.Millisecond)
	before := map[string]string{}
	for k, c := range r.state().Containers {
		before[k] = c.Status
	}
	r.newEvents()

	d.Kill()
	waitFor(t, 10*time.Second, "docker source marked failed", func() bool { return !r.state().Sources.Docker.OK })
	time.Sleep(2 * time.Second) // a few failing cycles
	if evs := r.newEvents(); len(evs) != 0 {
		t.Fatalf("events while dockerd was down: %+v", evs)
	}
	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "docker source back", func() bool { return r.state().Sources.Docker.OK })
	time.Sleep(3 * time.Second) // let restart policies settle and the loop catch up

	// The truth, from Docker itself.
	var want []string
	for _, id := range ids {
		js, err := d.Client.ContainerInspect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if js.State.Status != before[id[:12]] {
			want = append(want, event.ContainerStatusChanged+" "+id[:12]+" "+before[id[:12]]+"->"+js.State.Status)
		}
	}
	var got []string
	for _, e := range r.newEvents() {
		dd := details(t, e)
		if e.EventType != event.ContainerStatusChanged {
			t.Errorf("invented: %s %s", e.EventType, e.Details)
			continue
		}
		got = append(got, e.EventType+" "+dd["container_id"].(string)+" "+dd["old_status"].(string)+"->"+dd["new_status"].(string))
	}
	// A container may pass through a state and back (always restarts);
	// collapse each container's chain to its first and last status.
	got = collapse(got)
	sort.Strings(got)
	sort.Strings(want)
	t.Logf("real differences after the restart: %v", want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after the restart: got %v, want %v", got, want)
	}
	// And the stream is back: a new container arrives without a tick's help.
	id, err := d.Create(ctx, dockertest.Spec{Name: "after"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "new container after the restart", func() bool { return stateHas(dir, id) })
}

// collapse folds "type id a->b", "type id b->c" into "type id a->c", and
// drops a chain that ends where it began.
func collapse(lines []string) []string {
	type chain struct{ first, last string }
	order := []string{}
	chains := map[string]*chain{}
	for _, l := range lines {
		f := strings.Fields(l)
		key := f[0] + " " + f[1]
		from, to, _ := strings.Cut(f[2], "->")
		if c, ok := chains[key]; ok {
			c.last = to
			continue
		}
		chains[key] = &chain{from, to}
		order = append(order, key)
	}
	var out []string
	for _, k := range order {
		if c := chains[k]; c.first != c.last {
			out = append(out, k+" "+c.first+"->"+c.last)
		}
	}
	return out
}
