//go:build integration

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testbin"
)

func TestJSONThroughJQRoundTrips(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		t.Skipf("jq is not on PATH (%v): 'sudo make test' installs it", err)
	}
	out, _, rc := invoke([]string{"--state-file", td("full.json"), "--json", "--all"}, false, nil)
	if rc != 0 {
		t.Fatal(rc)
	}
	cmd := exec.Command("jq", "-c", ".")
	cmd.Stdin = strings.NewReader(out)
	viaJQ, err := cmd.Output()
	if err != nil {
		t.Fatalf("jq does not parse --json output: %v", err)
	}
	var a, b any
	json.Unmarshal([]byte(out), &a)
	json.Unmarshal(viaJQ, &b)
	if !reflect.DeepEqual(a, b) || a == nil {
		t.Error("jq round trip changed the document")
	}
	cmd = exec.Command("jq", "-r", `[.workloads[] | select(.kind=="host-process") | .user] | join(",")`)
	cmd.Stdin = strings.NewReader(out)
	users, err := cmd.Output()
	if err != nil || strings.TrimSpace(string(users)) != "bob,4242,alice" {
		t.Errorf("jq over workloads: %q %v", users, err)
	}
}

// The real daemon runs --once against a private dockerd; the CLI then reads
// the state file it wrote.
func TestAgainstRealDaemonOutput(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{NvidiaHook: true})
	ctx := context.Background()
	if _, err := d.Create(ctx, dockertest.Spec{Name: "alice-gpu", Start: true, Labels: map[string]string{"ds01.managed": "true", "ds01.user": "alice", "ds01.gpu.allocated": "1"},
		Host: container.HostConfig{Resources: container.Resources{DeviceRequests: []container.DeviceRequest{{Count: -1, Capabilities: [][]string{{"gpu"}}}}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Create(ctx, dockertest.Spec{Name: "bob-stopped", Labels: map[string]string{"com.docker.compose.project": "p", "com.docker.compose.project.working_dir": "/home/bob/p"}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := testbin.Path(t, "cmd/ds01-detectord")
	state := filepath.Join(dir, "state.json")
	if out, err := exec.Command(bin, "--once", "--docker-host", d.Host, "--state-file", state, "--events-file", filepath.Join(dir, "e.jsonl"), "--log-format", "console").CombinedOutput(); err != nil {
		t.Fatalf("daemon --once: %v\n%s", err, out)
	}
	var out, errb bytes.Buffer
	e := env{stdout: &out, stderr: &errb, now: time.Now, getenv: func(string) string { return "" }, ctx: ctx}
	if rc := run([]string{"--state-file", state, "--all"}, e); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	lines := strings.Split(out.String(), "\n")
	// Granted GPU 1, using none; docker-style status and an age from its
	// creation.
	if !strings.HasPrefix(lines[0], "TYPE") || !regexpMatch(`^ds01-managed\s+alice\s+- \(\+1\)\s+-\s+-\s+-\s+Up (Less than a second|\d+ seconds?)\s+\d+s\s+alice-gpu$`, lines) ||
		!regexpMatch(`^compose\s+bob\s+-\s+-\s+-\s+-\s+Created\s+\d+s\s+bob-stopped$`, lines) {
		t.Errorf("table:\n%s", out.String())
	}
	// The warning goes to stderr, the summary line to stdout.
	if !strings.Contains(out.String(), "2 containers (1 with GPU)") || !strings.Contains(errb.String(), "WARNING: GPU source failing") {
		t.Errorf("summary:\n%s\nstderr:\n%s", out.String(), errb.String())
	}
}
