//go:build integration

package main

// Fault injection with the real daemon in the foreground and a real private
// dockerd. docs/FAULTS.md lists each fault with the test that proves it.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
)

func TestFaultDockerdKilledMidCycleAndRestarted(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		if _, err := d.Create(ctx, dockertest.Spec{Name: "k" + string(rune('a'+i%26)) + strings.Repeat("x", i/26), Start: i%4 == 0}); err != nil {
			t.Fatal(err)
		}
	}
	f := newFiles(t, t.TempDir())
	p := startDaemon(t, f.args("--docker-host", d.Host, "--interval", "100ms", "--docker-timeout", "2s")...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", p.log())
		}
	})
	testutil.Eventually(t, 15*time.Second, "first inventory", func() bool { return len(f.State().Containers) == 40 })
	p.waitScans(t, 2)
	before := f.State()
	f.NewEvents()

	time.Sleep(time.Duration(testutil.FaultRand(t).IntN(100)) * time.Millisecond) // somewhere in a cycle
	d.Kill()
	testutil.Eventually(t, 10*time.Second, "docker marked failed", func() bool { return !f.State().Sources.Docker.OK })
	p.waitScans(t, 5) // cycles while dockerd is down
	st := f.State()
	if st.Sources.Docker.Error == "" || len(st.Containers) != 40 {
		t.Fatalf("while down: %d containers, sources %+v", len(st.Containers), st.Sources.Docker)
	}
	if evs := f.NewEvents(); len(evs) != 0 {
		t.Fatalf("events while dockerd was down: %+v", evs)
	}
	if n := countLines(p.log(), "docker source failed"); n != 1 {
		t.Errorf("%d 'docker source failed' warnings, want 1:\n%s", n, p.log())
	}

	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := len(p.log())
	testutil.Eventually(t, 10*time.Second, "docker back", func() bool { return f.State().Sources.Docker.OK })
	// Counted in the daemon's own log, not by how soon this test looks:
	// the cycles that ended after dockerd answered again and before the
	// one that logged the recovery (at most one was already under way).
	after := p.log()[restarted:]
	if i := strings.Index(after, "docker source recovered"); i < 0 {
		t.Error("no recovery line in the log")
	} else if n := countLines(after[:i], "scan complete"); n > 2 {
		t.Errorf("recovery took %d cycles", n)
	}
	p.waitScans(t, 3)
	for _, e := range f.NewEvents() {
		var id string
		if e.EventType != event.ContainerStatusChanged {
			t.Errorf("invented %s %s", e.EventType, e.Details)
			continue
		}
		id = string(e.Details)[strings.Index(string(e.Details), `"container_id":"`)+16:][:12]
		js, err := d.Client.ContainerInspect(ctx, id)
		if err != nil || js.State.Status == before.Containers[id].Status {
			t.Errorf("status change for %s that Docker does not show (%v)", id, err)
		}
	}
}

func TestFaultNoDockerSocketAtStart(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "dd")
	if err != nil {
		t.Fatal(err)
	}
	f := newFiles(t, t.TempDir())
	p := startDaemon(t, f.args("--docker-host", "unix://"+filepath.Join(dir, "docker.sock"), "--interval", "300ms")...)
	testutil.Eventually(t, 10*time.Second, "degraded state written", func() bool {
		st := f.State()
		return st.LastScan != nil && !st.Sources.Docker.OK && st.Sources.Docker.Error != ""
	})
	if !strings.Contains(p.log(), "docker source failed") {
		t.Errorf("degraded start not logged:\n%s", p.log())
	}
	d := dockertest.New(t, dockertest.Options{Dir: dir})
	id, err := d.Create(context.Background(), dockertest.Spec{Name: "late"})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "Docker picked up", func() bool {
		st := f.State()
		_, ok := st.Containers[id[:12]]
		return st.Sources.Docker.OK && ok
	})
}

func TestFaultDockerdStalls(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		if _, err := d.Create(ctx, dockertest.Spec{Name: "s" + string(rune('a'+i)), Start: i%2 == 0}); err != nil {
			t.Fatal(err)
		}
	}
	f := newFiles(t, t.TempDir())
	p := startDaemon(t, f.args("--docker-host", d.Host, "--interval", "300ms", "--scan-timeout", "1s", "--docker-timeout", "500ms")...)
	testutil.Eventually(t, 15*time.Second, "inventory", func() bool { return len(f.State().Containers) == 5 })
	f.NewEvents()
	before := f.State().Containers

	syscall.Kill(d.Pid(), syscall.SIGSTOP)
	// The loop goes on while dockerd does not answer: each cycle ends at
	// its 1 s deadline.
	stalled := countLines(p.log(), "scan complete")
	testutil.Eventually(t, 20*time.Second, "two cycles completed while dockerd is stopped", func() bool {
		return countLines(p.log(), "scan complete")-stalled >= 2
	})
	syscall.Kill(d.Pid(), syscall.SIGCONT)
	st := f.State()
	if st.Sources.Docker.OK || !strings.Contains(st.Sources.Docker.Error, "deadline") {
		t.Errorf("stalled source: %+v", st.Sources.Docker)
	}
	testutil.Eventually(t, 10*time.Second, "recovery", func() bool { return f.State().Sources.Docker.OK })
	p.waitScans(t, 3)
	if evs := f.NewEvents(); len(evs) != 0 {
		t.Fatalf("a stall invented events: %+v", evs)
	}
	after := f.State().Containers
	for k, c := range before {
		if after[k].Status != c.Status || after[k].DetectedAt != c.DetectedAt {
			t.Errorf("%s changed across the stall: %+v -> %+v", k, c, after[k])
		}
	}
}

func mount(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		t.Fatalf("mount %v: %v %s", args, err, out)
	}
}

func TestFaultDiskFullThenReadOnly(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "tiny")
	os.MkdirAll(dir, 0o755)
	mount(t, "-t", "tmpfs", "-o", "size=256k", "tmpfs", dir)
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	for i := 0; i < 3; i++ {
		if _, err := d.Create(ctx, dockertest.Spec{Name: "full" + string(rune('a'+i))}); err != nil {
			t.Fatal(err)
		}
	}
	f := newFiles(t, dir)
	p := startDaemon(t, f.args("--docker-host", d.Host, "--interval", "200ms")...)
	testutil.Eventually(t, 15*time.Second, "inventory", func() bool { return len(f.State().Containers) == 3 })
	p.waitScans(t, 2)
	if n := len(f.NewEvents()); n != 3 {
		t.Fatalf("%d events before the disk filled", n)
	}

	// Fill the disk.
	filler := filepath.Join(dir, "filler")
	fh, _ := os.Create(filler)
	chunk := make([]byte, 4096)
	for {
		if _, err := fh.Write(chunk); err != nil {
			break
		}
	}
	fh.Close()
	stateBefore, _ := os.ReadFile(f.StatePath)
	// Enough transitions that their lines cannot all fit in the slack of
	// the event log's last page (tmpfs allocates whole pages).
	var pending []string
	for i := 0; i < 16; i++ {
		id, err := d.Create(ctx, dockertest.Spec{Name: "pend" + string(rune('a'+i))})
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, id[:12])
	}
	p.waitScans(t, 5) // several cycles against a full disk
	if b, _ := os.ReadFile(f.StatePath); string(b) != string(stateBefore) {
		t.Fatal("state file changed on a full disk")
	}
	f.State()
	early := map[string]int{} // lines that still fitted before the page was full
	for _, e := range f.NewEvents() {
		early[string(e.Details)[17:29]]++
	}
	if len(early) == len(pending) {
		t.Fatal("every event fitted on a full disk; the test needs more transitions")
	}
	log := p.log()
	if n := countLines(log, "state file write failed"); n != 1 {
		t.Errorf("state write failure logged %d times, want once", n)
	}
	if n := countLines(log, "event log append failed"); n != 1 {
		t.Errorf("event append failure logged %d times, want once", n)
	}

	// Read-only: a new kind of failure, logged once more; nothing written.
	mount(t, "-o", "remount,ro", dir)
	testutil.Eventually(t, 10*time.Second, "the read-only failure logged", func() bool { return strings.Contains(p.log(), "read-only file system") })
	p.waitScans(t, 3) // and not logged again
	log = p.log()
	if n := countLines(log, "state file write failed"); n != 2 || !strings.Contains(log, "read-only file system") {
		t.Errorf("read-only: state failure logged %d times in all:\n%s", n, log)
	}
	if b, _ := os.ReadFile(f.StatePath); string(b) != string(stateBefore) {
		t.Fatal("state file changed on a read-only disk")
	}

	// Space comes back: the pending transitions are written exactly once.
	mount(t, "-o", "remount,rw", dir)
	os.Remove(filler)
	testutil.Eventually(t, 10*time.Second, "state written again", func() bool { return len(f.State().Containers) == 3+len(pending) })
	p.waitScans(t, 3)
	got := early
	for _, e := range f.NewEvents() {
		if e.EventType != event.ContainerDiscovered {
			t.Errorf("unexpected %s", e.EventType)
		}
		got[string(e.Details)[17:29]]++
	}
	for _, id := range pending {
		if got[id] != 1 {
			t.Errorf("pending discovery of %s written %d times", id, got[id])
		}
	}
	if len(got) != len(pending) {
		t.Errorf("written after recovery: %v", got)
	}
	if !strings.Contains(p.log(), "state file write recovered") || !strings.Contains(p.log(), "event log append recovered") {
		t.Error("recovery not logged")
	}
	eventLines(t, f.EventsPath) // no partial line anywhere
}

func TestFaultEventLogRotated(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	f := newFiles(t, t.TempDir())
	startDaemon(t, f.args("--docker-host", d.Host, "--interval", "1h")...)
	testutil.Eventually(t, 10*time.Second, "first scan", func() bool { return f.State().LastScan != nil })
	seen := map[string]int{}
	create := func(name string) string {
		id, err := d.Create(ctx, dockertest.Spec{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, name+" logged", func() bool {
			for _, e := range eventLines(t, f.EventsPath) {
				if strings.Contains(string(e.Details), id[:12]) {
					return true
				}
			}
			return false
		})
		return id[:12]
	}
	count := func(path string) {
		for _, e := range eventLines(t, path) {
			seen[string(e.Details)[17:29]]++
		}
	}
	ids := []string{create("rot1")}
	os.Rename(f.EventsPath, f.EventsPath+".1") // logrotate "create"
	ids = append(ids, create("rot2"))
	count(f.EventsPath + ".1")
	count(f.EventsPath)
	os.Remove(f.EventsPath) // deleted outright
	ids = append(ids, create("rot3"))
	b, _ := os.ReadFile(f.EventsPath) // logrotate "copytruncate"
	os.WriteFile(f.EventsPath+".2", b, 0o644)
	os.Truncate(f.EventsPath, 0)
	ids = append(ids, create("rot4"))
	count(f.EventsPath + ".2")
	count(f.EventsPath)
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("%s logged %d times across the rotations", id, seen[id])
		}
	}
	if b, _ := os.ReadFile(f.EventsPath); len(b) == 0 || b[0] != '{' {
		t.Errorf("after copytruncate the log does not start with a line: %q", b[:min(len(b), 20)])
	}
}

// The daemon is killed with SIGKILL at random points, over 500 cycles in
// all, while containers come and go. The state file always parses, the
// event log never holds a partial line, and every transition is delivered:
// containers created and removed while the daemon was down come from
// Docker's event replay; and none is written twice.
func TestFaultKill9Across500Cycles(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFiles(t, t.TempDir())
	bin0 := daemonBinary(t)
	// A first run, so that every container of the churn below is created
	// after the daemon first looked (one created and removed before the
	// detector ever ran cannot be known).
	if out, err := exec.Command(bin0, f.args("--docker-host", d.Host, "--once", "--log-format", "console")...).CombinedOutput(); err != nil {
		t.Fatalf("first run: %v\n%s", err, out)
	}

	var mu sync.Mutex
	created, removed := map[string]bool{}, map[string]bool{}
	when := map[string][2]time.Time{} // create and remove times, for diagnosis
	removeErr := map[string]error{}
	var churn sync.WaitGroup
	churn.Add(1)
	go func() { // containers come and go; about 20 stay, so cycles stay short
		defer churn.Done()
		var alive []string
		for i := 0; ctx.Err() == nil; i++ {
			id, err := d.Create(ctx, dockertest.Spec{Name: "churn" + strings.Repeat("z", i%3) + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676%26))})
			if err != nil {
				continue
			}
			mu.Lock()
			created[id[:12]] = true
			when[id[:12]] = [2]time.Time{time.Now()}
			mu.Unlock()
			time.Sleep(30 * time.Millisecond)
			victim := ""
			switch {
			case i%2 == 0:
				victim = id // short-lived
			case len(alive) >= 20:
				victim, alive = alive[0], append(alive[1:], id)
			default:
				alive = append(alive, id)
			}
			var rerr error
			if victim != "" {
				rerr = d.Client.ContainerRemove(ctx, victim, container.RemoveOptions{})
				mu.Lock()
				removeErr[victim[:12]] = rerr
				mu.Unlock()
			}
			if victim != "" && rerr == nil {
				mu.Lock()
				removed[victim[:12]] = true
				w := when[victim[:12]]
				w[1] = time.Now()
				when[victim[:12]] = w
				mu.Unlock()
			}
		}
	}()

	bin := daemonBinary(t)
	rnd := testutil.FaultRand(t)
	cycles, kills, torn := 0, 0, 0
	var lives []string
	// 500 cycles, however long a loaded machine takes for them (292 in 4
	// minutes at a load of 12 on 2 cores); the limit only ends a hang.
	deadline := time.Now().Add(12 * time.Minute)
	for cycles < 500 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d cycles in 12 minutes (%d kills); lives:\n%s", cycles, kills, strings.Join(lives, "\n"))
		}
		cmd := exec.Command(bin, f.args("--docker-host", d.Host, "--interval", "20ms", "--log-format", "console")...)
		var out strings.Builder
		cmd.Stderr = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		time.Sleep(time.Duration(20+rnd.IntN(400)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		kills++
		n := strings.Count(out.String(), "scan complete")
		cycles += n
		st := f.State()
		cp := ""
		if st.DockerEventsSince != nil {
			cp = st.DockerEventsSince.Format("15:04:05.000")
		}
		lives = append(lives, fmt.Sprintf("%s-%s cycles=%d checkpoint=%s", started.Format("15:04:05.000"), time.Now().Format("15:04:05.000"), n, cp))
		// The state always parses, and the log holds whole lines: at most
		// its end is part of a line the state still records as unlogged (a
		// SIGKILL can end a write(2) part way), which the next start cuts
		// and appends whole.
		if tornTail(t, f.EventsPath, f.State().UnloggedEvents) {
			torn++
		}
	}
	cancel()
	churn.Wait()
	// Settle: a last run with the event stream replays what happened after
	// the final kill, then stops cleanly.
	final := exec.Command(bin, f.args("--docker-host", d.Host, "--interval", "200ms", "--log-format", "console")...)
	var fout testutil.Buffer
	final.Stderr = &fout
	if err := final.Start(); err != nil {
		t.Fatal(err)
	}
	// Eight cycles at 200 ms: the replay, and more than the 1.5 s this
	// waited when it slept.
	testutil.Eventually(t, 60*time.Second, "the settling run's cycles", func() bool { return strings.Count(fout.String(), "scan complete") >= 8 })
	final.Process.Signal(syscall.SIGTERM)
	if err := final.Wait(); err != nil {
		t.Fatalf("final run: %v\n%s", err, fout.String())
	}
	// What was removed, from Docker itself, after the settling run: a
	// remove the cancellation cut short on the client side may still have
	// gone through on the server a moment later.
	all, err := d.Client.ContainerList(context.Background(), container.ListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	alive := map[string]bool{}
	for _, c := range all {
		alive[c.ID[:12]] = true
	}
	churnRemoved := map[string]bool{}
	for id, v := range removed {
		churnRemoved[id] = v
	}
	for id := range created {
		removed[id] = !alive[id]
	}
	for id, gone := range removed {
		if !gone {
			delete(removed, id)
		}
	}

	disc, exit := map[string]int{}, map[string]int{}
	for _, e := range eventLines(t, f.EventsPath) {
		id := string(e.Details)[17:29]
		switch e.EventType {
		case event.ContainerDiscovered:
			disc[id]++
		case event.ContainerExited:
			exit[id]++
		}
	}
	dups := 0
	for id := range created {
		if disc[id] < 1 {
			w := when[id]
			t.Errorf("container %s never discovered (created %s, removed %s)", id, w[0].Format("15:04:05.000"), w[1].Format("15:04:05.000"))
			for _, l := range lives {
				t.Log(l)
			}
		}
		dups += max(0, disc[id]-1)
	}
	for id := range removed {
		if exit[id] < 1 {
			t.Errorf("removal of %s never reported", id)
		}
		dups += max(0, exit[id]-1)
	}
	for id := range exit {
		if !removed[id] {
			w := when[id]
			t.Errorf("exited event for %s, which was not removed (created %s)", id, w[0].Format("15:04:05.000"))
			if js, err := d.Client.ContainerInspect(context.Background(), id); err == nil {
				t.Logf("  docker now: status %s, removal in progress %v, dead %v; in final state: %v; remove error: %v",
					js.State.Status, js.State.Status == "removing", js.State.Dead, f.State().Containers[id].Status, removeErr[id])
			} else {
				t.Logf("  docker inspect: %v", err)
			}
			t.Logf("  alive at the end %v, churn removed %v, remove error %v, created %v, listed %d", alive[id], churnRemoved[id], removeErr[id], created[id], len(all))
			for _, e := range eventLines(t, f.EventsPath) {
				if strings.Contains(string(e.Details), id) {
					t.Logf("  %s %s %s", e.Timestamp, e.EventType, e.Details)
				}
			}
			for _, l := range lives {
				t.Log(l)
			}
		}
	}
	t.Logf("%d cycles, %d kills (%d of them in the middle of a line), %d containers created, %d removed, %d duplicate events", cycles, kills, torn, len(created), len(removed), dups)
	if dups != 0 {
		t.Errorf("%d transitions written more than once: a crash alone must not repeat a line", dups)
	}
}

// tornTail checks that every line of the log is a whole event but perhaps
// the last, which may only be the start of one of unlogged (the lines the
// state records as not yet logged), and reports whether it was.
func tornTail(t *testing.T, path string, unlogged []string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 || b[len(b)-1] == '\n' {
		eventLines(t, path)
		return false
	}
	frag := b[bytes.LastIndexByte(b, '\n')+1:]
	for _, l := range unlogged {
		if len(frag) < len(l) && strings.HasPrefix(l, string(frag)) {
			return true
		}
	}
	t.Fatalf("%s ends in a partial line that is not one the state records as unlogged: %q", path, frag)
	return false
}
