//go:build integration

package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
)

// churnResult is one churn run: a container started and removed every
// 0.2 s for 20 s among idle containers.
type churnResult struct {
	idle        int
	churned     int
	listCalls   float64
	scans       float64 // cycles the daemon ran during the window
	scanWall    float64 // seconds those cycles took, end to end
	daemonCPU   float64 // seconds
	dockerdCPU  float64 // seconds
	latencies   []time.Duration
	wrongCounts []string // containers not reported exactly once
}

// releaseDaemon is the daemon built as make deb builds the one the package
// ships (-trimpath -buildmode=pie -s -w): memory is measured on that
// binary, since how much of a binary stays resident depends on how it is
// linked (on 2026-11-29, at rest: PIE adds about 2 MB of private pages and
// saves 2.5 MB of file pages against a plain go build).
func releaseDaemon(b *testing.B) string {
	return testbin.Path(b, "cmd/ds01-detectord", "-trimpath", "-buildmode=pie", "-ldflags=-s -w")
}

// churn runs the churn against idle stopped containers on a private
// dockerd, with the real daemon (default --interval, so the 20 s window
// holds at most one reconciliation tick).
func churn(b *testing.B, idle int) churnResult {
	d := dockertest.New(b, dockertest.Options{})
	ctx := context.Background()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := 0; i < idle; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := d.Create(ctx, dockertest.Spec{Name: fmt.Sprintf("idle-%04d", i), Labels: map[string]string{"ds01.user": fmt.Sprintf("user%02d", i%40)}}); err != nil {
				b.Error(err)
			}
		}(i)
	}
	wg.Wait()
	bin := releaseDaemon(b)
	dir := b.TempDir()
	state, events := filepath.Join(dir, "state.json"), filepath.Join(dir, "events.jsonl")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--docker-host", d.Host, "--metrics-listen", addr, "--state-file", state, "--events-file", events,
		"--log-format", "json", "--nvml-library", filepath.Join(dir, "none.so"))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	// Ready: the first scan has written the state, and the stream's first
	// (full) scan has primed the inventory.
	if !testutil.Poll(2*time.Minute, func() bool {
		st, err := os.ReadFile(state)
		return err == nil && strings.Count(string(st), `"full_id"`) == idle
	}) {
		b.Fatalf("the daemon never listed %d containers", idle)
	}
	time.Sleep(3 * time.Second)

	// Detection: a poller notes when each container is first reported:
	// listed in the state file on disk, or discovered in the event log (a
	// container that lives between two cycles is only in the log). It
	// parses the state only when a new file was renamed into place.
	seen := map[string]time.Time{}
	var seenMu sync.Mutex
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		var stateIno uint64
		var logOff int64
		for {
			select {
			case <-stopPoll:
				return
			case <-time.After(5 * time.Millisecond):
			}
			now := time.Now()
			note := func(id string) {
				seenMu.Lock()
				if _, ok := seen[id]; !ok {
					seen[id] = now
				}
				seenMu.Unlock()
			}
			if f, err := os.Open(events); err == nil {
				f.Seek(logOff, io.SeekStart)
				bb, _ := io.ReadAll(f)
				f.Close()
				if i := bytes.LastIndexByte(bb, '\n'); i >= 0 {
					logOff += int64(i + 1)
					for _, line := range bytes.Split(bb[:i], []byte("\n")) {
						var e struct {
							EventType string `json:"event_type"`
							Details   struct {
								ContainerID string `json:"container_id"`
								Name        string `json:"name"`
							} `json:"details"`
						}
						if json.Unmarshal(line, &e) == nil && e.EventType == event.ContainerDiscovered && strings.HasPrefix(e.Details.Name, "churn-") {
							note(e.Details.ContainerID)
						}
					}
				}
			}
			var fst syscall.Stat_t
			if syscall.Stat(state, &fst) != nil || fst.Ino == stateIno {
				continue
			}
			stateIno = fst.Ino
			bb, _ := os.ReadFile(state)
			var st struct {
				Containers map[string]struct {
					Name string `json:"name"`
				} `json:"containers"`
			}
			if json.Unmarshal(bb, &st) == nil {
				for id, c := range st.Containers {
					if strings.HasPrefix(c.Name, "churn-") {
						note(id)
					}
				}
			}
		}
	}()

	lists0, scans0 := apiRequests(b, addr)["GET /containers/json"], scrape(b, addr, "ds01_detector_scan_duration_seconds_count")
	wall0 := scrape(b, addr, "ds01_detector_scan_duration_seconds_sum")
	t0, dt0 := cpuTicks(cmd.Process.Pid), cpuTicks(d.Pid())
	// One container is started every 0.2 s and removed 0.2 s after its
	// start returned, each in its own goroutine, so the pace of changes
	// does not follow dockerd's speed: on a day dockerd took 0.75 s for a
	// create and start, one at a time gave a change every 0.4 s, which the
	// debounce rightly treats as isolated changes. At most 4 are in
	// flight; the log says how many were churned.
	var mu sync.Mutex
	started := map[string]time.Time{}
	var ids []string
	var fails []error
	var churning sync.WaitGroup
	inFlight := make(chan struct{}, 4)
	tick := time.NewTicker(200 * time.Millisecond)
	end := time.Now().Add(20 * time.Second)
	for i := 0; time.Now().Before(end); i++ {
		inFlight <- struct{}{}
		churning.Add(1)
		go func(i int) {
			defer churning.Done()
			defer func() { <-inFlight }()
			id, err := d.Create(ctx, dockertest.Spec{Name: fmt.Sprintf("churn-%03d", i), Start: true})
			mu.Lock()
			if err != nil {
				fails = append(fails, err)
				mu.Unlock()
				return
			}
			started[id[:12]] = time.Now()
			ids = append(ids, id)
			mu.Unlock()
			<-time.After(200 * time.Millisecond)
			if err := d.Client.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil {
				mu.Lock()
				fails = append(fails, err)
				mu.Unlock()
			}
		}(i)
		<-tick.C
	}
	tick.Stop()
	churning.Wait()
	for _, err := range fails {
		b.Fatal(err)
	}
	t1, dt1 := cpuTicks(cmd.Process.Pid), cpuTicks(d.Pid())
	lists1, scans1 := apiRequests(b, addr)["GET /containers/json"], scrape(b, addr, "ds01_detector_scan_duration_seconds_count")
	wall1 := scrape(b, addr, "ds01_detector_scan_duration_seconds_sum")
	time.Sleep(3 * time.Second)
	close(stopPoll)
	<-pollDone
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	d.Cleanup() // stop this dockerd before the next run

	res := churnResult{idle: idle, churned: len(ids), listCalls: lists1 - lists0, scans: scans1 - scans0, scanWall: wall1 - wall0,
		daemonCPU: float64(t1-t0) / 100, dockerdCPU: float64(dt1-dt0) / 100}
	for id, t := range started {
		if s, ok := seen[id]; ok {
			res.latencies = append(res.latencies, max(s.Sub(t), 0))
		} else {
			res.latencies = append(res.latencies, time.Minute) // never seen: counts as a miss
		}
	}
	disc, exit := map[string]int{}, map[string]int{}
	evs := testutil.ReadLog(b, events)
	for _, e := range evs {
		var dd struct {
			ContainerID string `json:"container_id"`
		}
		json.Unmarshal(e.Details, &dd)
		switch e.EventType {
		case event.ContainerDiscovered:
			disc[dd.ContainerID]++
		case event.ContainerExited:
			exit[dd.ContainerID]++
		}
	}
	for _, id := range ids {
		if disc[id[:12]] != 1 || exit[id[:12]] != 1 {
			res.wrongCounts = append(res.wrongCounts, fmt.Sprintf("%s discovered %d exited %d", id[:12], disc[id[:12]], exit[id[:12]]))
		}
	}
	b.Logf("churn among %d idle: %d containers, %.0f scans (%.0f ms each on average), %.0f list calls, daemon CPU %.2f s, dockerd CPU %.2f s, detection p50 %v p95 %v, %d not exactly once",
		idle, res.churned, res.scans, 1000*res.scanWall/maxf(res.scans, 1), res.listCalls, res.daemonCPU, res.dockerdCPU,
		pct(res.latencies, 50).Round(time.Millisecond), pct(res.latencies, 95).Round(time.Millisecond), len(res.wrongCounts))
	return res
}

// scrape reads one unlabelled sample from the daemon's metrics.
func scrape(b *testing.B, addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	b.Fatalf("no %s in the metrics", name)
	return 0
}

// BenchmarkChurn is the churn part of Benchmark1000Containers alone (make
// bench runs it there): the same churn among 200 and 2,000 idle containers.
func BenchmarkChurn(b *testing.B) {
	small, large := churn(b, 200), churn(b, 2000)
	b.Logf("daemon CPU ratio %.2f, dockerd CPU ratio %.2f, list calls %.0f, detection p95 %v",
		large.daemonCPU/maxf(small.daemonCPU, 0.01), large.dockerdCPU/maxf(small.dockerdCPU, 0.01), large.listCalls, pct(large.latencies, 95))
	for _, w := range append(small.wrongCounts, large.wrongCounts...) {
		b.Errorf("churn: %s", w)
	}
}
