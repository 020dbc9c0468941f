//go:build integration

package daemon

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
)

// TestMain removes the programs the tests built (testbin).
func TestMain(m *testing.M) { testbin.Main(m) }

// These tests run the real daemon, wired by New as main wires it (the
// loop, the scanner and Docker's event stream), against a private dockerd.

// rig is a daemon's files and its log.
type rig struct {
	*testutil.Files
	log func() string
}

// waitScans waits until the daemon has logged n more completed cycles
// ("scan complete", one line each) than it had when called.
func (r *rig) waitScans(t *testing.T, n int) {
	t.Helper()
	from := strings.Count(r.log(), "scan complete")
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d more completed scans", n), func() bool {
		return strings.Count(r.log(), "scan complete") >= from+n
	})
}

// testConfig is the defaults with the test's own files and dockerd, no
// metrics endpoint and no sealing key (the host's is not the test's).
func testConfig(files *testutil.Files, host string, interval time.Duration) Config {
	cfg := Defaults()
	cfg.Files = deliver.Config{StatePath: files.StatePath, EventsPath: files.EventsPath}
	cfg.SealKey, cfg.Web.ListenAddresses = "", nil
	cfg.DockerHost, cfg.DockerTimeout = host, 3*time.Second
	cfg.Interval, cfg.ScanTimeout, cfg.Debounce = interval, 5*time.Second, 50*time.Millisecond
	return cfg
}

// runDaemon runs the daemon in the test process until the test ends.
func runDaemon(t *testing.T, host string, interval time.Duration) *rig {
	files := testutil.NewFiles(t)
	log, logged := testutil.Logger()
	d, err := New(testConfig(files, host, interval), log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		if err := d.Run(ctx, nil); err != nil {
			t.Errorf("run: %v", err)
		}
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done; d.Close() })
	return &rig{files, logged}
}

func stateHas(f *rig, id string) bool {
	b, _ := os.ReadFile(f.StatePath)
	return strings.Contains(string(b), `"`+id[:12]+`"`)
}

func TestRelistFindsContainerCreatedWhileStreamWasDown(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	p, err := d.Proxy()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	files := runDaemon(t, p.Host, time.Hour) // no tick will help
	ctx := context.Background()
	first, err := d.Create(ctx, dockertest.Spec{Name: "before"})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "container via the event stream", func() bool { return stateHas(files, first) })

	p.Cut()
	testutil.Eventually(t, 10*time.Second, "the stream's break noticed", func() bool {
		return strings.Contains(files.log(), "docker event stream broke") || strings.Contains(files.log(), "docker event stream down")
	})
	hidden, err := d.Create(ctx, dockertest.Spec{Name: "while-down"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if stateHas(files, hidden) {
		t.Fatal("container seen through a cut link")
	}
	p.Mend()
	testutil.Eventually(t, 15*time.Second, "container created while the stream was down", func() bool { return stateHas(files, hidden) })
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
	files := runDaemon(t, d.Host, time.Second)
	r := files
	testutil.Eventually(t, 10*time.Second, "all three in the state", func() bool {
		return stateHas(files, ids["runs"]) && stateHas(files, ids["created"]) && stateHas(files, ids["always"])
	})
	r.waitScans(t, 2)
	before := map[string]string{}
	for k, c := range r.State().Containers {
		before[k] = c.Status
	}
	r.NewEvents()

	d.Kill()
	testutil.Eventually(t, 10*time.Second, "docker source marked failed", func() bool { return !r.State().Sources.Docker.OK })
	r.waitScans(t, 2) // a few failing cycles
	if evs := r.NewEvents(); len(evs) != 0 {
		t.Fatalf("events while dockerd was down: %+v", evs)
	}
	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "docker source back", func() bool { return r.State().Sources.Docker.OK })
	// The restart policy brings "always" back; then the loop catches up.
	testutil.Eventually(t, 15*time.Second, "the always-restarting container running again", func() bool {
		js, err := d.Client.ContainerInspect(ctx, ids["always"])
		return err == nil && js.State.Running
	})
	r.waitScans(t, 3)

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
	for _, e := range r.NewEvents() {
		dd := testutil.Details(t, e)
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
	testutil.Eventually(t, 5*time.Second, "new container after the restart", func() bool { return stateHas(files, id) })
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

// Churn (a container started and removed every 100 ms) while dockerd is
// restarted in the middle: every container the churn made is reported
// discovered exactly once and, once removed, exited exactly once.
func TestChurnAcrossADockerdRestart(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	r := runDaemon(t, d.Host, time.Second)
	ctx := context.Background()
	var made []string
	removed := map[string]bool{}
	prev := ""
	churn := func(n int) {
		for i := 0; i < n; i++ {
			time.Sleep(100 * time.Millisecond)
			id, err := d.Create(ctx, dockertest.Spec{Name: fmt.Sprintf("churn-%03d", len(made)), Start: true})
			if err != nil {
				t.Fatal(err)
			}
			made = append(made, id)
			if prev != "" {
				if err := d.Client.ContainerRemove(ctx, prev, container.RemoveOptions{Force: true}); err != nil {
					t.Fatal(err)
				}
				removed[prev] = true
			}
			prev = id
		}
	}
	churn(12)
	// The stream breaks in the middle of the churn, with the last container
	// still running. (The churn holds still for the moment of the kill:
	// what dockerd had not yet published when it died is Docker's loss,
	// documented in docs/FAULTS.md.)
	time.Sleep(300 * time.Millisecond)
	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
	churn(12)
	if err := d.Client.ContainerRemove(ctx, prev, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	removed[prev] = true
	ids := made
	count := func() (map[string]int, map[string]int) {
		disc, exit := map[string]int{}, map[string]int{}
		for _, e := range r.Events() {
			id, _ := testutil.Details(t, e)["container_id"].(string)
			switch e.EventType {
			case event.ContainerDiscovered:
				disc[id]++
			case event.ContainerExited:
				exit[id]++
			}
		}
		return disc, exit
	}
	testutil.Eventually(t, 20*time.Second, "every churned container reported", func() bool {
		disc, exit := count()
		for _, id := range ids {
			if disc[id[:12]] == 0 || (removed[id] && exit[id[:12]] == 0) {
				return false
			}
		}
		return true
	})
	r.waitScans(t, 2) // a few more cycles: nothing may repeat
	disc, exit := count()
	for _, id := range ids {
		if disc[id[:12]] != 1 || exit[id[:12]] != 1 {
			t.Errorf("%s: discovered %d, exited %d", id[:12], disc[id[:12]], exit[id[:12]])
		}
	}
	t.Logf("%d churned containers, each reported once", len(ids))
}
