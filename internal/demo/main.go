// Command demo is `sudo make demo`: the product in a minute, without a GPU
// server. It starts a private dockerd (as the tests do: its own socket and
// data root, no network), a handful of realistic containers and two host
// processes, and runs ds01-detectord against them with the stand-in NVML
// library of the tests (one GPU whose processes come from a control file).
// Then it shows ds01-workloads, gpus and report on what the daemon sees,
// and waits for Ctrl-C (or ends at once with --no-wait). On the way out it
// stops and removes everything it started: the daemon, the processes, the
// containers, dockerd, its mounts and its directory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/view"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func main() {
	bin := flag.String("bin", "bin", "directory with ds01-detectord and ds01-workloads")
	stub := flag.String("nvml-stub", "cmd/ds01-detectord/testdata/nvmlstub/nvmlstub.c", "the stand-in NVML library's source")
	noWait := flag.Bool("no-wait", false, "end (and clean up) after showing the views, instead of waiting for Ctrl-C")
	within := flag.Duration("within", 90*time.Second, "how long to wait for the daemon to see the GPU work")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	d := &demo{bin: *bin}
	err := d.run(ctx, *stub, *within, *noWait)
	d.cleanup()
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type demo struct {
	bin     string
	dir     string
	docker  *dockertest.Daemon
	daemon  *exec.Cmd
	procs   []*exec.Cmd
	created []string
}

func say(format string, a ...any) { fmt.Printf("\n\x1b[1m==> "+format+"\x1b[0m\n", a...) }

func (d *demo) run(ctx context.Context, stubSrc string, within time.Duration, noWait bool) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo starts a private dockerd and must run as root: sudo make demo")
	}
	for _, p := range []string{"dockerd", "gcc"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s is needed (apt-get install docker.io gcc)", p)
		}
	}
	var err error
	if d.dir, err = os.MkdirTemp("/tmp", "ds01-demo-"); err != nil {
		return err
	}
	say("a private dockerd (its own socket and data root under %s; your Docker is not touched)", d.dir)
	if d.docker, err = dockertest.Start(dockertest.Options{NvidiaHook: true}); err != nil {
		return err
	}
	fmt.Printf("  dockerd %s, PID %d\n", d.docker.Host, d.docker.Pid())
	if err := d.docker.BuildImages(ctx); err != nil {
		return err
	}

	say("containers: ds01-managed, compose, devcontainer, one using a GPU without a grant, one idle GPU holder")
	gpu := container.HostConfig{Resources: container.Resources{DeviceRequests: []container.DeviceRequest{{Count: -1, Capabilities: [][]string{{"gpu"}}}}}}
	specs := []dockertest.Spec{
		{Name: "alice-train._.1001", Labels: map[string]string{"ds01.managed": "true", "ds01.user": "alice", "ds01.gpu.allocated": "0"}, Host: gpu, Start: true},
		{Name: "bobproj-notebook-1", Labels: map[string]string{"com.docker.compose.project": "bobproj", "com.docker.compose.project.working_dir": "/home/bob/bobproj"}, Host: gpu, Start: true},
		{Name: "vsc-carol-thesis-4f2a", Labels: map[string]string{"devcontainer.local_folder": "/home/carol/thesis"}, Start: true},
		{Name: "sneaky", Start: true},
		{Name: "dave-old-run", Labels: map[string]string{"ds01.user": "dave"}},
	}
	pids := map[string]int{}
	for _, s := range specs {
		id, err := d.docker.Create(ctx, s)
		if id != "" {
			d.created = append(d.created, id)
		}
		if err != nil {
			return err
		}
		if s.Start {
			js, err := d.docker.Client.ContainerInspect(ctx, id)
			if err != nil {
				return err
			}
			pids[s.Name] = js.State.Pid
		}
		fmt.Printf("  %-24s %s\n", s.Name, id[:12])
	}

	say("host processes: one on the GPU (as nobody), one not")
	for _, gpuUser := range []bool{true, false} {
		cmd := exec.Command("sleep", "3600")
		if gpuUser {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		d.procs = append(d.procs, cmd)
		fmt.Printf("  sleep 3600, PID %d%s\n", cmd.Process.Pid, map[bool]string{true: " (on the GPU)", false: ""}[gpuUser])
	}

	say("the stand-in NVML library: one GPU, the processes and their utilisation from a file")
	lib := filepath.Join(d.dir, "libnvidia-ml.so.1")
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", lib, stubSrc).CombinedOutput(); err != nil {
		return fmt.Errorf("building the stand-in NVML: %v\n%s", err, out)
	}
	ctl := filepath.Join(d.dir, "gpu.txt")
	// PID MIB SM: alice trains (busy), bob's notebook holds memory idle,
	// sneaky uses the GPU without a grant, nobody's host process too.
	gpuLines := fmt.Sprintf("%d 30000 85\n%d 20000 0\n%d 512 40\n%d 2048 12\n",
		pids["alice-train._.1001"], pids["bobproj-notebook-1"], pids["sneaky"], d.procs[0].Process.Pid)
	if err := os.WriteFile(ctl, []byte(gpuLines), 0o644); err != nil {
		return err
	}
	fmt.Print(indent(gpuLines))

	state, events := filepath.Join(d.dir, "workload-inventory.json"), filepath.Join(d.dir, "events.jsonl")
	say("ds01-detectord: scans every 5 s, idle after 15 s (a server runs 30 s and 30 min); log in %s", filepath.Join(d.dir, "daemon.log"))
	logf, err := os.Create(filepath.Join(d.dir, "daemon.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	d.daemon = exec.Command(filepath.Join(d.bin, "ds01-detectord"), "--docker-host", d.docker.Host, "--nvml-library", lib,
		"--state-file", state, "--events-file", events, "--interval", "5s", "--gpu-idle-after", "15s",
		"--idle-grace", "0s", "--idle-window", "1", "--web.listen-address", "", "--log-format", "console")
	d.daemon.Env = append(os.Environ(), "DS01_NVML_STUB="+ctl, "NOTIFY_SOCKET=")
	d.daemon.Stdout, d.daemon.Stderr = logf, logf
	d.daemon.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.daemon.Start(); err != nil {
		return err
	}

	fmt.Printf("\nwaiting for the daemon to see the GPU work and an idle holder (at most %s)…\n", within)
	deadline := time.Now().Add(within)
	for {
		if seen(state) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon did not show a GPU container and an idle holder within %s; see %s", within, filepath.Join(d.dir, "daemon.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}

	w := filepath.Join(d.bin, "ds01-workloads")
	for _, args := range [][]string{
		{"--state-file", state},
		{"gpus", "--state-file", state},
		{"report", "--since", "1h", "--state-file", state, "--events-file", events},
		{"events", "--limit", "8", "--events-file", events},
	} {
		say("ds01-workloads %s", strings.Join(args, " "))
		cmd := exec.Command(w, args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		cmd.Run()
	}
	if noWait {
		return nil
	}
	say("the demo keeps running; in another terminal try:")
	fmt.Printf("  %s --state-file %s --watch\n  %s --state-file %s --wide --all\n  %s events --events-file %s --follow\n\nCtrl-C ends it and removes everything it started.\n",
		w, state, w, state, w, events)
	<-ctx.Done()
	return nil
}

// seen: a container with a GPU process, an idle GPU holder (past
// --gpu-idle-after) and the confirmed host process are in the state file.
func seen(state string) bool {
	st, err := inventory.Read(state)
	if err != nil {
		return false
	}
	gpu, idle := false, false
	for _, w := range view.Rows(st, time.Now()) {
		if w.Kind == workload.KindContainer && len(w.GPUsInUse) > 0 {
			gpu = true
			if w.Idle {
				idle = true
			}
		}
	}
	return gpu && idle && len(st.HostProcesses) > 0
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}

// cleanup stops and removes everything the demo started, whatever step it
// reached.
func (d *demo) cleanup() {
	fmt.Println("\ncleaning up: the daemon, the host processes, the containers, dockerd and its files")
	if d.daemon != nil && d.daemon.Process != nil {
		d.daemon.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { d.daemon.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			d.daemon.Process.Kill()
		}
	}
	for _, p := range d.procs {
		p.Process.Kill()
		p.Wait()
	}
	if d.docker != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for _, id := range d.created {
			d.docker.Client.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
		}
		cancel()
		d.docker.Cleanup()
	}
	testbin.Clean() // the test containers' helper program
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}
