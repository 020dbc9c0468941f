//go:build integration

package cycle

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/dockertest"
)

// The jq programs the Python scanner's consumers run (docs/COMPAT.md),
// copied from their code with the filter values filled in.
var consumers = []struct{ name, file, program string }{
	{"ds01-workloads table", "state", `.containers | to_entries[] | .value | select(.status=="running" or .status==null) | [.origin, .user, (if (.gpu_devices|length)>0 then (.gpu_devices|join(", ")) else "-" end), .status, .detected_at, .name] | @tsv`},
	{"ds01-workloads --gpu-only --all", "state", `.containers | to_entries[] | .value | select(.has_gpu==true or .gpu_memory_mb!=null) | [.origin, .name, .has_gpu] | @tsv`},
	{"ds01-workloads --by-user gpu count", "state", `[.containers[] | select(.has_gpu) | {user, n: (.gpu_devices|length)}] | group_by(.user) | map({user: .[0].user, gpus: (map(.n)|add)}) | .[] | [.user, .gpus] | @tsv`},
	{"ds01-workloads --json", "state", `{last_scan: (.last_scan|type), containers: (.containers|keys|length), host_processes: .host_processes}`},
	{"ds01-workloads host rows", "state", `.host_processes | to_entries[] | .value | [.user, "\(.gpu_memory_mb)MB", .cmdline] | @tsv`},
	{"ds01-monthly-report discovered", "events", `select(.event_type=="detection.container_discovered") | [.details.has_gpu, .details.container_id, .user, (.timestamp|test("^[0-9-]+T[0-9:.]+Z$"))] | @tsv`},
	{"ds01-monthly-report exited", "events", `select(.event_type=="detection.container_exited") | .details.container_id`},
	{"ds01-events --type detection --user alice", "events", `select(((.event_type // .event) | startswith("detection")) and .user=="alice") | [.event_type, .source, .schema_version] | @tsv`},
	{"exporter event_type count", "events", `.event_type`},
}

func TestConsumersReadOutputUnchanged(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		t.Skipf("the consumer golden test runs the consumers' jq programs, and jq is not on PATH (%v): 'sudo make test' installs it", err)
	}
	d := dockertest.New(t, dockertest.Options{NvidiaHook: true})
	ctx := context.Background()
	mk := func(s dockertest.Spec) string {
		id, err := d.Create(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	mk(dockertest.Spec{Name: "alice-proj._.1001", Start: true, Labels: map[string]string{"ds01.managed": "true", "ds01.user": "alice", "ds01.gpu.allocated": "0.0,0.1"},
		Host: container.HostConfig{Resources: container.Resources{DeviceRequests: []container.DeviceRequest{{DeviceIDs: []string{"MIG-a", "MIG-b"}, Capabilities: [][]string{{"gpu"}}}}}}})
	mk(dockertest.Spec{Name: "vsc-bob-123", Start: true, Labels: map[string]string{"devcontainer.local_folder": "/home/bob/x"}})
	gone := mk(dockertest.Spec{Name: "carol-tmp", Labels: map[string]string{"com.docker.compose.project": "p", "com.docker.compose.project.working_dir": "/home/carol/p"},
		Host: container.HostConfig{Resources: container.Resources{DeviceRequests: gpus("gpu")}}})

	r := newRig(t, d)
	r.cycle()
	if err := d.Client.ContainerRemove(ctx, gone, container.RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	r.cycle()

	ids := map[string]string{}
	for _, c := range r.State().Containers {
		ids[c.ID] = c.Name
		// The file the consumers read carries the activity keys too.
		if c.Status == "running" && (c.CPUPercent == nil || c.MemoryBytes == nil || c.IdleSignals == nil || c.IdlePolicy == nil) {
			t.Errorf("%s: no activity in the state: cpu %v memory %v", c.Name, c.CPUPercent, c.MemoryBytes)
		}
	}
	ids[gone[:12]] = "carol-tmp"
	stamp := regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z`)

	var out bytes.Buffer
	for _, c := range consumers {
		path := r.StatePath
		args := []string{"-r", c.program, path}
		if c.file == "events" {
			path = r.EventsPath
			args = []string{"-r", "-c", c.program, path}
		}
		res, err := exec.Command("jq", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: jq failed: %v\n%s", c.name, err, res)
		}
		s := stamp.ReplaceAllString(string(res), "<time>")
		for id, name := range ids {
			s = strings.ReplaceAll(s, id, "<id:"+name+">")
		}
		if !strings.HasPrefix(s, "{") { // rows come in container-ID order, which is random here
			lines := strings.Split(strings.TrimSpace(s), "\n")
			sort.Strings(lines)
			s = strings.Join(lines, "\n") + "\n"
		}
		out.WriteString("## " + c.name + "\n" + s + "\n")
	}
	golden := filepath.Join("testdata", "consumers.golden")
	if *update {
		os.WriteFile(golden, out.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Errorf("consumer output differs from %s (run with -update to see):\n%s", golden, out.String())
	}
}
