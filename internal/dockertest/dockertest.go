// Package dockertest starts a private Docker Engine for tests: its own
// socket, data root and exec root under a temporary directory, no network
// bridge and no iptables, so it cannot disturb the host's Docker. It also
// builds the test image by importing a tarball holding a static helper
// binary, since nothing can be pulled here.
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/ds01/ds01-detectord/internal/testbin"
)

// Image names made by BuildImages.
const (
	Image        = "ds01-test/helper:latest"
	ImageCUDAEnv = "ds01-test/cuda-env:latest" // sets NVIDIA_VISIBLE_DEVICES=all in the image
)

// Options configure a daemon.
type Options struct {
	// Runtimes are registered with --add-runtime name=path.
	Runtimes map[string]string
	// DefaultRuntime, when set, is passed as --default-runtime.
	DefaultRuntime string
	// NvidiaHook puts a no-op nvidia-container-runtime-hook on dockerd's
	// PATH, which lets --gpus containers start.
	NvidiaHook bool
	// Dir, when set, is used instead of a fresh temporary directory, so a
	// test can know the socket path (Dir/docker.sock) before dockerd runs.
	Dir string
}

// Daemon is a running private dockerd.
type Daemon struct {
	Dir    string
	Host   string // unix:///…/docker.sock
	Client *client.Client
	opts   Options
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start launches dockerd and waits until it answers. It fails with a clear
// message when dockerd is missing or the caller is not root.
func Start(opts Options) (*Daemon, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("dockertest: the integration tests start a private dockerd and must run as root (use 'sudo make test')")
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		return nil, fmt.Errorf("dockertest: dockerd not found; 'make test' installs docker.io: %w", err)
	}
	dir := opts.Dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("/tmp", "dd"); err != nil { // short: unix socket paths are limited to 108 bytes
			return nil, err
		}
	}
	d := &Daemon{Dir: dir, Host: "unix://" + filepath.Join(dir, "docker.sock"), opts: opts}
	if opts.NvidiaHook {
		bin := filepath.Join(dir, "bin")
		os.MkdirAll(bin, 0o755)
		if err := os.WriteFile(filepath.Join(bin, "nvidia-container-runtime-hook"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			return nil, err
		}
	}
	if err := d.launch(); err != nil {
		d.Cleanup()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) launch() error {
	args := []string{
		"--host", d.Host,
		"--data-root", filepath.Join(d.Dir, "root"),
		"--exec-root", filepath.Join(d.Dir, "exec"),
		"--pidfile", filepath.Join(d.Dir, "docker.pid"),
		"--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
		"--log-level=warn", "--userland-proxy=false",
	}
	for name, p := range d.opts.Runtimes {
		args = append(args, "--add-runtime", name+"="+p)
	}
	if d.opts.DefaultRuntime != "" {
		args = append(args, "--default-runtime", d.opts.DefaultRuntime)
	}
	logf, err := os.OpenFile(filepath.Join(d.Dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("dockerd", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(d.Dir, "bin")+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start dockerd: %w", err)
	}
	logf.Close()
	d.cmd = cmd
	d.exited = make(chan struct{})
	go func() { cmd.Wait(); close(d.exited) }()

	if d.Client == nil {
		cli, err := client.NewClientWithOpts(client.WithHost(d.Host), client.WithAPIVersionNegotiation())
		if err != nil {
			return err
		}
		d.Client = cli
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			return fmt.Errorf("dockerd exited at start; log:\n%s", d.LogTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := d.Client.Ping(ctx)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("dockerd did not answer within 60s; log:\n%s", d.LogTail())
}

// Pid is dockerd's PID.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// LogTail returns the end of dockerd's log.
func (d *Daemon) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "dockerd.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Stop sends SIGTERM and waits for dockerd (and its containerd) to exit.
func (d *Daemon) Stop() error {
	if d.cmd == nil {
		return nil
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	}
	d.cmd = nil
	return nil
}

// Kill sends SIGKILL to dockerd, as a crash would, and to everything it
// started: its containerd, the shims and the containers. (An orphaned
// managed containerd with its shims keeps the next dockerd from starting on
// a busy machine; on a real host containerd is a service of its own.)
func (d *Daemon) Kill() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
	d.cmd = nil
	d.killStragglers()
}

// Restart starts dockerd again on the same socket and data root.
func (d *Daemon) Restart() error {
	if d.cmd != nil {
		d.Stop()
	}
	return d.launch()
}

// killStragglers kills what a crashed dockerd left running: its
// containerd, the shims and the containers' processes, all of which name
// this daemon's directory on their command lines.
func (d *Daemon) killStragglers() {
	d.killMatching(func(cmdline []byte) bool {
		// Docker's own processes only: a client of this daemon names the
		// directory on its command line too.
		argv0, _, _ := bytes.Cut(cmdline, []byte{0})
		base := filepath.Base(string(argv0))
		return bytes.Contains(cmdline, []byte(d.Dir)) &&
			(strings.HasPrefix(base, "containerd") || base == "dockerd" || base == "runc" || base == "docker-proxy")
	})
	// The containers' own processes, found by their cgroups.
	ids, _ := os.ReadDir(filepath.Join(d.Dir, "root", "containers"))
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || len(ids) == 0 {
			continue
		}
		cg, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		for _, id := range ids {
			if bytes.Contains(cg, []byte(id.Name())) {
				syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	}
	// The next dockerd trusts containerd's pid file, and a killed process
	// whose parent is gone can linger as a zombie under that PID.
	os.Remove(filepath.Join(d.Dir, "exec", "containerd", "containerd.pid"))
}

func (d *Daemon) killMatching(match func(cmdline []byte) bool) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if match(b) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Cleanup stops dockerd, unmounts what it left mounted and removes the
// directory.
func (d *Daemon) Cleanup() {
	d.Stop()
	d.killStragglers()
	if d.Client != nil {
		d.Client.Close()
	}
	// dockerd unmounts on a clean stop; a crash can leave mounts behind.
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var mps []string
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) > 4 && strings.HasPrefix(f[4], d.Dir) {
				mps = append(mps, f[4])
			}
		}
		for i := len(mps) - 1; i >= 0; i-- {
			syscall.Unmount(mps[i], syscall.MNT_DETACH)
		}
	}
	os.RemoveAll(d.Dir)
}

// BuildImages compiles the helper statically and imports it as Image and
// ImageCUDAEnv.
func (d *Daemon) BuildImages(ctx context.Context) error {
	bin, err := testbin.Build("internal/dockertest/helper", []string{"CGO_ENABLED=0"})
	if err != nil {
		return fmt.Errorf("build helper: %w", err)
	}
	payload, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "helper", Mode: 0o755, Size: int64(len(payload)), Typeflag: tar.TypeReg})
	tw.Write(payload)
	for _, dir := range []string{"tmp/", "home/"} {
		tw.WriteHeader(&tar.Header{Name: dir, Mode: 0o1777, Typeflag: tar.TypeDir})
	}
	tw.Close()
	for ref, changes := range map[string][]string{
		Image:        {`CMD ["/helper","sleep"]`},
		ImageCUDAEnv: {`CMD ["/helper","sleep"]`, "ENV NVIDIA_VISIBLE_DEVICES=all"},
	} {
		rc, err := d.Client.ImageImport(ctx, image.ImportSource{Source: bytes.NewReader(buf.Bytes()), SourceName: "-"}, ref, image.ImportOptions{Changes: changes})
		if err != nil {
			return fmt.Errorf("import %s: %w", ref, err)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
	}
	return nil
}

// Spec describes a container to create.
type Spec struct {
	Name   string
	Image  string // default Image
	Labels map[string]string
	Env    []string
	Cmd    []string
	User   string
	Host   container.HostConfig
	Start  bool
}

// Create makes (and optionally starts) a container and returns its full ID.
func (d *Daemon) Create(ctx context.Context, s Spec) (string, error) {
	if s.Image == "" {
		s.Image = Image
	}
	hc := s.Host
	hc.NetworkMode = "none"
	resp, err := d.Client.ContainerCreate(ctx, &container.Config{Image: s.Image, Labels: s.Labels, Env: s.Env, Cmd: s.Cmd, User: s.User}, &hc, nil, nil, s.Name)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", s.Name, err)
	}
	if s.Start {
		if err := d.Client.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
			return resp.ID, fmt.Errorf("start %s: %w", s.Name, err)
		}
	}
	return resp.ID, nil
}

// New starts a daemon for a test with the test images imported, and stops
// and removes it when the test ends. It fails the test when dockerd cannot
// start.
func New(t testing.TB, opts Options) *Daemon {
	t.Helper()
	d, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Cleanup)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := d.BuildImages(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}
