package main

import (
	"bufio"
	"bytes"
	"context"
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

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// daemonBinary builds the real daemon once per test run.
func daemonBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ds01bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "ds01-detectord")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
}

func (p *proc) log() string { p.mu.Lock(); defer p.mu.Unlock(); return p.stderr.String() }

// startDaemon runs the binary in the foreground with args.
func startDaemon(t *testing.T, args ...string) *proc {
	t.Helper()
	return startDaemonEnv(t, nil, args...)
}

// startDaemonEnv runs the binary with extra environment variables.
func startDaemonEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(daemonBinary(t), append([]string{"--log-format", "console"}, args...)...), done: make(chan struct{})}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	r, w := io.Pipe()
	p.cmd.Stderr = w
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); w.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
		}
	})
	return p
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// listeningTCP lists the TCP sockets in LISTEN state that pid holds.
func listeningTCP(pid int) []string {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, f := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		for _, line := range strings.Split(string(b), "\n")[1:] {
			x := strings.Fields(line)
			if len(x) > 9 && x[3] == "0A" && inodes[x[9]] {
				out = append(out, x[1])
			}
		}
	}
	return out
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
		"--interval", "1h", "--metrics-listen", addr, "--nvml-library", filepath.Join(dir, "none.so"))

	var body string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), "ds01_detector_last_scan_timestamp_seconds ") {
				body = string(b)
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if body == "" {
		t.Fatalf("no metrics with a scan; log:\n%s", p.log())
	}
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	st, err := inventory.Parse(b)
	if err != nil {
		t.Fatal(err)
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
		`ds01_detector_scan_duration_seconds_count 1`,
		`ds01_detector_build_info{version=`,
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

func TestNoListenerWithoutTheFlag(t *testing.T) {
	dir := t.TempDir()
	p := startDaemon(t, "--docker-host", "unix://"+filepath.Join(dir, "none.sock"), "--state-file", filepath.Join(dir, "s.json"),
		"--events-file", filepath.Join(dir, "e.jsonl"), "--interval", "1h")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.log(), "scan complete") {
		if time.Now().After(deadline) {
			t.Fatalf("no cycle:\n%s", p.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l := listeningTCP(p.cmd.Process.Pid); len(l) != 0 {
		t.Fatalf("listening on %v without --metrics-listen", l)
	}
	// And with the flag the same check sees the listener (the check works).
	addr := freeAddr(t)
	q := startDaemon(t, "--docker-host", "unix://"+filepath.Join(dir, "none.sock"), "--state-file", filepath.Join(dir, "s2.json"),
		"--events-file", filepath.Join(dir, "e2.jsonl"), "--interval", "1h", "--metrics-listen", addr)
	for len(listeningTCP(q.cmd.Process.Pid)) == 0 {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("no listener with --metrics-listen:\n%s", q.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBadMetricsAddressFailsAtStartup(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	for _, addr := range []string{taken.Addr().String(), "192.0.2.1:9102", "127.0.0.1:99999"} {
		cmd := exec.Command(daemonBinary(t), "--log-format", "console", "--docker-host", "unix://"+filepath.Join(dir, "none.sock"),
			"--state-file", filepath.Join(dir, "s.json"), "--events-file", filepath.Join(dir, "e.jsonl"), "--metrics-listen", addr)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "cannot serve metrics") || !strings.Contains(string(out), addr) {
			t.Errorf("%s: err %v, output:\n%s", addr, err, out)
		}
	}
}
