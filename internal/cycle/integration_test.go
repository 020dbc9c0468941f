//go:build integration

package cycle

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/source/activity"
	"github.com/ds01/ds01-detectord/internal/source/docker"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/internal/userdb"
	"github.com/ds01/ds01-detectord/pkg/event"
)

// TestMain removes the programs the tests built (testbin).
func TestMain(m *testing.M) { testbin.Main(m) }

// rig is a scanner over a private dockerd, writing into a test directory.
type rig struct {
	*testutil.Files
	t   testing.TB
	src *docker.Source
	det *Scanner
}

func newRig(t testing.TB, d *dockertest.Daemon) *rig {
	t.Helper()
	src, err := docker.New(d.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	r := &rig{Files: testutil.NewFiles(t), t: t, src: src}
	r.det = r.newScanner()
	return r
}

func (r *rig) newScanner() *Scanner {
	return New(Config{
		Files:  deliver.Config{StatePath: r.StatePath, EventsPath: r.EventsPath},
		Docker: r.src, Proc: proc.New("/proc"), Users: userdb.New(time.Minute).Lookup,
		Activity: activity.New("/proc", ""),
	}, nil)
}

func (r *rig) cycle() summary.Summary {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := r.det.Scan(ctx, true)
	if s.StateWriteErr != nil || s.EventAppendErr != nil {
		r.t.Fatalf("cycle write errors: state %v, events %v", s.StateWriteErr, s.EventAppendErr)
	}
	return s
}

func gpus(caps ...string) []container.DeviceRequest {
	return []container.DeviceRequest{{Count: -1, Capabilities: [][]string{caps}}}
}

type want struct {
	origin, user, userSource string
	hasGPU                   bool
	access                   []string
	devices                  []string
	status                   string
}

func TestInventoryAgainstRealDocker(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{Runtimes: map[string]string{"nvidia": "runc"}, NvidiaHook: true})
	ctx := context.Background()

	bindSrc := "/home/ds01dave/src"
	if err := os.MkdirAll(bindSrc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll("/home/ds01dave") })

	cases := map[string]struct {
		spec dockertest.Spec
		want want
	}{
		"managed": {dockertest.Spec{
			Labels: map[string]string{"ds01.managed": "true", "ds01.user": "alice", "ds01.gpu.allocated": "0.0,0.1"},
			Host:   container.HostConfig{Resources: container.Resources{DeviceRequests: []container.DeviceRequest{{DeviceIDs: []string{"GPU-aaaa"}, Capabilities: [][]string{{"gpu"}}}}}},
			Start:  true,
		}, want{"ds01-managed", "alice", "label:ds01.user", true, []string{"device-request"}, []string{"0.0", "0.1"}, "running"}},
		"managed-True-is-not-managed": {dockertest.Spec{
			Labels: map[string]string{"ds01.managed": "True", "aime.mlc.USER": "frank"},
		}, want{"raw-docker", "frank", "label:aime.mlc.USER", false, []string{}, []string{}, "created"}},
		"devcontainer-label": {dockertest.Spec{
			Labels: map[string]string{"devcontainer.local_folder": "/home/h.baker@hertie-school.lan/proj"},
		}, want{"devcontainer", "h.baker@hertie-school.lan", "label:devcontainer.local_folder", false, []string{}, []string{}, "created"}},
		"compose": {dockertest.Spec{
			Labels: map[string]string{"com.docker.compose.project": "app", "com.docker.compose.project.working_dir": "/home/carol/app"},
			Start:  true,
		}, want{"compose", "carol", "label:com.docker.compose.project.working_dir", false, []string{}, []string{}, "running"}},
		"vsc-name-bind-mount": {dockertest.Spec{
			Name: "vsc-thing-123",
			Host: container.HostConfig{Binds: []string{bindSrc + ":/workspace"}},
		}, want{"devcontainer", "ds01dave", "bind-mount", false, []string{}, []string{}, "created"}},
		"name-uid": {dockertest.Spec{
			Name: "job._.65534",
		}, want{"raw-docker", "nobody", "name-uid", false, []string{}, []string{}, "created"}},
		"raw-non-root-init": {dockertest.Spec{
			User: "65534", Start: true,
		}, want{"raw-docker", "nobody", "process-owner", false, []string{}, []string{}, "running"}},
		"raw-root-init-is-unknown": {dockertest.Spec{
			Start: true,
		}, want{"raw-docker", "unknown", "none", false, []string{}, []string{}, "running"}},
		"gpus-all-created": {dockertest.Spec{
			Host: container.HostConfig{Resources: container.Resources{DeviceRequests: gpus("gpu")}},
		}, want{"raw-docker", "unknown", "none", true, []string{"device-request"}, []string{}, "created"}},
		"gpus-all-running": {dockertest.Spec{
			Host:  container.HostConfig{Resources: container.Resources{DeviceRequests: gpus("gpu")}},
			Start: true,
		}, want{"raw-docker", "unknown", "none", true, []string{"device-request"}, []string{}, "running"}},
		"gpus-device-ids": {dockertest.Spec{
			Host: container.HostConfig{Resources: container.Resources{DeviceRequests: []container.DeviceRequest{{DeviceIDs: []string{"GPU-1111", "MIG-2222"}, Capabilities: [][]string{{"gpu"}}}}}},
		}, want{"raw-docker", "unknown", "none", true, []string{"device-request"}, []string{"GPU-1111", "MIG-2222"}, "created"}},
		"device-node-only": {dockertest.Spec{
			Host: container.HostConfig{Resources: container.Resources{Devices: []container.DeviceMapping{{PathOnHost: "/dev/nvidia0", PathInContainer: "/dev/nvidia0", CgroupPermissions: "rwm"}}}},
		}, want{"raw-docker", "unknown", "none", true, []string{"device-node"}, []string{}, "created"}},
		"nvidia-runtime-with-env": {dockertest.Spec{
			Env: []string{"NVIDIA_VISIBLE_DEVICES=0,1"}, Host: container.HostConfig{Runtime: "nvidia"}, Start: true,
		}, want{"raw-docker", "unknown", "none", true, []string{"nvidia-runtime"}, []string{"0", "1"}, "running"}},
		"nvidia-runtime-image-env": {dockertest.Spec{
			Image: dockertest.ImageCUDAEnv, Host: container.HostConfig{Runtime: "nvidia"},
		}, want{"raw-docker", "unknown", "none", true, []string{"nvidia-runtime"}, []string{"all"}, "created"}},
		"nvidia-runtime-no-env": {dockertest.Spec{
			Host: container.HostConfig{Runtime: "nvidia"}, Start: true,
		}, want{"raw-docker", "unknown", "none", false, []string{}, []string{}, "running"}},
		"nvidia-runtime-void": {dockertest.Spec{
			Image: dockertest.ImageCUDAEnv, Env: []string{"NVIDIA_VISIBLE_DEVICES=void"}, Host: container.HostConfig{Runtime: "nvidia"},
		}, want{"raw-docker", "unknown", "none", false, []string{}, []string{}, "created"}},
		"runc-with-env-is-no-gpu": {dockertest.Spec{
			Image: dockertest.ImageCUDAEnv,
		}, want{"raw-docker", "unknown", "none", false, []string{}, []string{}, "created"}},
		// created only: this sandbox cannot grant a privileged container all caps
		"privileged": {dockertest.Spec{
			Host: container.HostConfig{Privileged: true},
		}, want{"raw-docker", "unknown", "none", true, []string{"privileged"}, []string{}, "created"}},
		"stopped": {dockertest.Spec{
			Labels: map[string]string{"ds01.managed": "true", "ds01.user": "gina"},
			Cmd:    []string{"/helper", "exit", "3"}, Start: true,
		}, want{"ds01-managed", "gina", "label:ds01.user", false, []string{}, []string{}, "exited"}},
	}

	ids := map[string]string{}
	for name, c := range cases {
		if c.spec.Name == "" {
			c.spec.Name = "t-" + name
		}
		id, err := d.Create(ctx, c.spec)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, d.LogTail())
		}
		ids[name] = id[:12]
	}
	waitStatus(t, d, ids["stopped"], "exited")

	r := newRig(t, d)
	s := r.cycle()
	if !s.DockerOK {
		t.Fatalf("docker source failed: %s", s.DockerError)
	}
	st := r.State()
	if len(st.Containers) != len(cases) {
		t.Errorf("state has %d containers, want %d", len(st.Containers), len(cases))
	}
	for name, c := range cases {
		got, ok := st.Containers[ids[name]]
		if !ok {
			t.Errorf("%s: not in state", name)
			continue
		}
		g := want{got.Origin, got.User, got.UserSource, got.HasGPU, got.GPUAccess, got.GPUDevices, got.Status}
		if !reflect.DeepEqual(g, c.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", name, g, c.want)
		}
		if got.Status == "running" && got.Pid <= 0 {
			t.Errorf("%s: running without pid", name)
		}
		if got.Image == "" || got.DetectedAt.IsZero() || got.FullID[:12] != got.ID {
			t.Errorf("%s: incomplete entry %+v", name, got)
		}
	}

	// First cycle: exactly one discovered event per container.
	evs := r.NewEvents()
	if len(evs) != len(cases) {
		t.Fatalf("first cycle: %d events, want %d", len(evs), len(cases))
	}
	for _, e := range evs {
		if e.EventType != event.ContainerDiscovered || e.Source != event.Source || e.SchemaVersion != "1" {
			t.Errorf("unexpected event %+v", e)
		}
	}

	// Nothing changed: no events, detected_at kept.
	r.cycle()
	if evs := r.NewEvents(); len(evs) != 0 {
		t.Fatalf("unchanged cycle emitted %d events: %+v", len(evs), evs)
	}
	if st2 := r.State(); !st2.Containers[ids["compose"]].DetectedAt.Equal(st.Containers[ids["compose"]].DetectedAt.Time) {
		t.Error("detected_at changed between cycles")
	}

	// Stop one: a status change. Remove one: exactly one exited.
	timeout := 1
	if err := d.Client.ContainerStop(ctx, ids["compose"], container.StopOptions{Timeout: &timeout}); err != nil {
		t.Fatal(err)
	}
	if err := d.Client.ContainerRemove(ctx, ids["name-uid"], container.RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	r.cycle()
	evs = r.NewEvents()
	if len(evs) != 2 {
		t.Fatalf("stop+remove gave %d events, want 2: %+v", len(evs), evs)
	}
	if evs[0].EventType != event.ContainerStatusChanged || testutil.Details(t, evs[0])["container_id"] != ids["compose"] ||
		testutil.Details(t, evs[0])["old_status"] != "running" || testutil.Details(t, evs[0])["new_status"] != "exited" || evs[0].User != "carol" {
		t.Errorf("status change event wrong: %+v %s", evs[0], evs[0].Details)
	}
	if evs[1].EventType != event.ContainerExited || testutil.Details(t, evs[1])["container_id"] != ids["name-uid"] || testutil.Details(t, evs[1])["origin"] != "raw-docker" {
		t.Errorf("exited event wrong: %+v %s", evs[1], evs[1].Details)
	}
	r.cycle()
	if evs := r.NewEvents(); len(evs) != 0 {
		t.Fatalf("repeat after removal: %+v", evs)
	}

	// A new process picks up where the state file left off: no storm.
	r.det = r.newScanner()
	r.cycle()
	if evs := r.NewEvents(); len(evs) != 0 {
		t.Fatalf("restarted detector emitted %d events", len(evs))
	}

	// Docker stopped mid-run: no exited events, ok=false, containers kept.
	before := r.State()
	running := []string{}
	for k, c := range before.Containers {
		if c.Status == "running" {
			running = append(running, k)
		}
	}
	sort.Strings(running)
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	s = r.cycle()
	after := r.State()
	if s.DockerOK || after.Sources.Docker.OK || after.Sources.Docker.Error == "" {
		t.Fatalf("docker down but sources.docker = %+v", after.Sources.Docker)
	}
	if after.Sources.Docker.LastOK == nil || !after.Sources.Docker.LastOK.Equal(before.Sources.Docker.LastOK.Time) {
		t.Errorf("last_ok not kept: %v vs %v", after.Sources.Docker.LastOK, before.Sources.Docker.LastOK)
	}
	if !reflect.DeepEqual(after.Containers, before.Containers) {
		t.Errorf("containers changed while docker was down")
	}
	if evs := r.NewEvents(); len(evs) != 0 {
		t.Fatalf("docker down emitted events: %+v", evs)
	}
	r.cycle()
	if evs := r.NewEvents(); len(evs) != 0 {
		t.Fatalf("docker still down emitted events: %+v", evs)
	}

	// Docker back: only the real differences. The containers that were
	// running are now exited (no restart policy); nothing was removed.
	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
	s = r.cycle()
	if !s.DockerOK {
		t.Fatalf("docker back but source failed: %s", s.DockerError)
	}
	evs = r.NewEvents()
	var changed []string
	for _, e := range evs {
		if e.EventType != event.ContainerStatusChanged {
			t.Errorf("after restart: unexpected %s %s", e.EventType, e.Details)
			continue
		}
		changed = append(changed, fmt.Sprint(testutil.Details(t, e)["container_id"]))
	}
	sort.Strings(changed)
	if !reflect.DeepEqual(changed, running) {
		t.Errorf("after restart, status changes for %v, want the previously running %v", changed, running)
	}
}

func waitStatus(t *testing.T, d *dockertest.Daemon, id, status string) {
	t.Helper()
	if !testutil.Poll(10*time.Second, func() bool {
		js, err := d.Client.ContainerInspect(context.Background(), id)
		return err == nil && js.State.Status == status
	}) {
		t.Fatalf("%s never reached %s", id, status)
	}
}

func TestDefaultRuntimeNvidia(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{Runtimes: map[string]string{"nvidia": "runc"}, DefaultRuntime: "nvidia"})
	ctx := context.Background()
	with, err := d.Create(ctx, dockertest.Spec{Name: "with-env", Env: []string{"NVIDIA_VISIBLE_DEVICES=GPU-abcd"}, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	without, err := d.Create(ctx, dockertest.Spec{Name: "without-env", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, d)
	r.cycle()
	st := r.State()
	w := st.Containers[with[:12]]
	if !w.HasGPU || !reflect.DeepEqual(w.GPUAccess, []string{"nvidia-runtime"}) || !reflect.DeepEqual(w.GPUDevices, []string{"GPU-abcd"}) {
		t.Errorf("default nvidia runtime with env: %+v", w)
	}
	if wo := st.Containers[without[:12]]; wo.HasGPU {
		t.Errorf("default nvidia runtime without env has GPU: %+v", wo)
	}
}
