//go:build integration

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func TestOnce(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	id, err := d.Create(ctx, dockertest.Spec{Name: "once", Labels: map[string]string{"ds01.user": "alice"}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state, events := filepath.Join(dir, "lib", "state.json"), filepath.Join(dir, "log", "events.jsonl")
	args := []string{"--docker-host", d.Host, "--state-file", state, "--events-file", events, "--log-format", "console", "--once"}

	// --dry-run prints the inventory and writes nothing.
	var out, errb bytes.Buffer
	if rc := run(append(args, "--dry-run"), &out, &errb); rc != 0 {
		t.Fatalf("dry run exit %d: %s", rc, errb.String())
	}
	var st inventory.State
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("dry-run output is not the inventory: %v\n%s", err, out.String())
	}
	if c := st.Containers[id[:12]]; c.User != "alice" || c.Status != "running" || !st.Sources.Docker.OK {
		t.Errorf("dry-run inventory: %+v", st)
	}
	// This machine has no GPU: the real NVML fails to load, and that is
	// reported, not fatal.
	if st.Sources.GPU.OK || !strings.Contains(st.Sources.GPU.Error, "nvmlInit") {
		t.Errorf("gpu source on a GPU-less machine: %+v", st.Sources.GPU)
	}
	if _, err := os.Stat(filepath.Join(dir, "lib")); !os.IsNotExist(err) {
		t.Error("dry run created the state directory")
	}
	if _, err := os.Stat(events); !os.IsNotExist(err) {
		t.Error("dry run wrote events")
	}

	// --once writes both; a second run with nothing changed adds no event.
	for i := 0; i < 2; i++ {
		if rc := run(args, &out, &errb); rc != 0 {
			t.Fatalf("once #%d exit %d: %s", i, rc, errb.String())
		}
	}
	if evs := testutil.ReadLog(t, events); len(evs) != 1 || evs[0].EventType != event.ContainerDiscovered {
		t.Errorf("events after two runs: %+v", evs)
	}
	if _, err := os.Stat(state); err != nil {
		t.Error(err)
	}
}

func TestMetricsEndpointAgainstTheStateFile(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	for _, s := range []dockertest.Spec{{Name: "m1", Start: true}, {Name: "m2"}, {Name: "m3", Labels: map[string]string{"ds01.managed": "true"}}} {
		if _, err := d.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state.json")
	addr := freeAddr(t)
	p := startDaemon(t, "--docker-host", d.Host, "--state-file", state, "--events-file", filepath.Join(dir, "e.jsonl"),
		"--interval", "1h", "--web.listen-address", addr, "--nvml-library", filepath.Join(dir, "none.so"))

	var body string
	deadline := time.Now().Add(20 * time.Second)
	testutil.Poll(20*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "ds01_detector_last_scan_timestamp_seconds ") {
			body = string(b)
		}
		return body != ""
	})
	if body == "" {
		t.Fatalf("no metrics with a scan; log:\n%s", p.log())
	}
	// Another scan (an event the stream replays, say) may come between
	// the scrape and the read of the state: compare a scrape with the
	// state file it lies between two equal reads of.
	var st inventory.State
	for time.Now().Before(deadline) {
		before := readState(t, state)
		if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		if st = readState(t, state); st.LastScan.Equal(before.LastScan.Time) {
			break
		}
	}
	want := []string{
		fmt.Sprintf("ds01_detector_last_scan_timestamp_seconds %s", strconv.FormatFloat(float64(st.LastScan.UnixNano())/1e9, 'g', -1, 64)),
		`ds01_detector_source_up{source="docker"} 1`,
		`ds01_detector_source_up{source="gpu"} 0`,
		`ds01_containers{has_gpu="false",origin="raw-docker",status="running"} 1`,
		`ds01_containers{has_gpu="false",origin="raw-docker",status="created"} 1`,
		`ds01_containers{has_gpu="false",origin="ds01-managed",status="created"} 1`,
		`ds01_detector_events_total{event_type="detection.container_discovered"} 3`,
		`ds01_workloads_gpu_without_access 0`,
		`ds01_detector_scan_duration_seconds_count `,
		`ds01_detector_build_info{branch=`,
		`,version="dev"} 1`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("metrics lack %q", w)
		}
	}
	if len(st.Containers) != 3 {
		t.Errorf("state has %d containers", len(st.Containers))
	}
}
