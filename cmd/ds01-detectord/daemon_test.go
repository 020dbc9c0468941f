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

// withListen gives a daemon's arguments a metrics endpoint on a port of
// its own unless they name one: the default port would collide with the
// next daemon, or with a real one on this host.
//
// It also gives the daemon the tests' sealing key unless the arguments
// name one: the default, in /var/lib/ds01-detectord, is the host's.
func withListen(args []string) []string {
	seal, listen := true, true
	for _, a := range args {
		if strings.HasPrefix(a, "--web.listen-address") || strings.HasPrefix(a, "--metrics-listen") {
			listen = false
		}
		if strings.HasPrefix(a, "--seal-key") {
			seal = false
		}
	}
	if seal {
		args = append([]string{"--seal-key=" + testSealKey}, args...)
	}
	if listen {
		args = append([]string{"--web.listen-address=127.0.0.1:0"}, args...)
	}
	return args
}

// testSealKey is the sealing key every daemon of these tests shares.
// testSealKey is the sealing key of the daemons the tests start: in a
// directory of this test run's own (TestMain), never the host's default
// /var/lib/ds01-detectord, so the tests run as any user.
var testSealKey string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ds01-detectord-tests-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testSealKey = filepath.Join(dir, "seal.key")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startDaemonEnv runs the binary with extra environment variables.
func startDaemonEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startDaemonUnder(t, env, nil, args...)
}

// startDaemonUnder runs the binary through wrapper (a command that execs
// its arguments, such as prlimit), with extra environment variables.
func startDaemonUnder(t *testing.T, env, wrapper []string, args ...string) *proc {
	t.Helper()
	argv := append(append(append([]string{}, wrapper...), daemonBinary(t), "--log-format", "console"), withListen(args)...)
	p := &proc{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
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
		"--interval", "1h", "--web.listen-address", addr, "--nvml-library", filepath.Join(dir, "none.so"))

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

// --web.listen-address "" (or --metrics-listen "") turns the endpoint off:
// no listening socket at all.
func TestNoListenerWhenTurnedOff(t *testing.T) {
	dir := t.TempDir()
	for i, off := range []string{"--web.listen-address=", "--metrics-listen="} {
		p := startDaemon(t, "--docker-host", "unix://"+filepath.Join(dir, "none.sock"), "--state-file", filepath.Join(dir, fmt.Sprint(i, "s.json")),
			"--events-file", filepath.Join(dir, fmt.Sprint(i, "e.jsonl")), "--interval", "1h", off)
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(p.log(), "scan complete") {
			if time.Now().After(deadline) {
				t.Fatalf("no cycle:\n%s", p.log())
			}
			time.Sleep(50 * time.Millisecond)
		}
		if l := listeningTCP(p.cmd.Process.Pid); len(l) != 0 {
			t.Fatalf("listening on %v with %s", l, off)
		}
	}
	// And with an address the same check sees the listener (the check
	// works), with no warning: it is loopback.
	addr := freeAddr(t)
	q := startDaemon(t, "--docker-host", "unix://"+filepath.Join(dir, "none.sock"), "--state-file", filepath.Join(dir, "s2.json"),
		"--events-file", filepath.Join(dir, "e2.jsonl"), "--interval", "1h", "--web.listen-address", addr)
	deadline := time.Now().Add(10 * time.Second)
	for len(listeningTCP(q.cmd.Process.Pid)) == 0 || !strings.Contains(q.log(), "scan complete") {
		if time.Now().After(deadline) {
			t.Fatalf("no listener with --web.listen-address:\n%s", q.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(q.log(), "reachable from other hosts") {
		t.Errorf("warning for a loopback address:\n%s", q.log())
	}
}

// An endpoint other hosts can reach, without a web configuration, is
// warned about once at the start, with the addresses as fields.
func TestExposedEndpointWarnsOnce(t *testing.T) {
	dir := t.TempDir()
	p := startDaemon(t, "--docker-host", "unix://"+filepath.Join(dir, "none.sock"), "--state-file", filepath.Join(dir, "s.json"),
		"--events-file", filepath.Join(dir, "e.jsonl"), "--interval", "100ms", "--web.listen-address", ":0")
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(p.log(), "scan complete") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("no cycles:\n%s", p.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := strings.Count(p.log(), "reachable from other hosts"); n != 1 || !strings.Contains(p.log(), `"exposed_addresses": ["`) {
		t.Errorf("%d warnings:\n%s", n, p.log())
	}
}

func TestBadMetricsAddressFailsAtStartup(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	badConf := filepath.Join(dir, "web.yml")
	if err := os.WriteFile(badConf, []byte("tls_server_config:\n  cert_file: none.pem\n  key_file: none.pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ flag, addr, want string }{
		{"--metrics-listen", taken.Addr().String(), taken.Addr().String()},
		{"--web.listen-address", taken.Addr().String(), taken.Addr().String()},
		{"--web.listen-address", "192.0.2.1:19400", "192.0.2.1:19400"},
		{"--web.listen-address", "127.0.0.1:99999", "127.0.0.1:99999"},
		{"--web.config.file", badConf, badConf},
		{"--web.config.file", filepath.Join(dir, "missing.yml"), "missing.yml"},
	} {
		args := []string{"--log-format", "console", "--docker-host", "unix://" + filepath.Join(dir, "none.sock"),
			"--state-file", filepath.Join(dir, "s.json"), "--events-file", filepath.Join(dir, "e.jsonl"), "--seal-key", testSealKey, c.flag, c.addr}
		if c.flag == "--web.config.file" {
			args = append(args, "--web.listen-address", "127.0.0.1:0")
		}
		out, err := exec.Command(daemonBinary(t), args...).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "cannot serve metrics") || !strings.Contains(string(out), c.want) {
			t.Errorf("%s %s: err %v, output:\n%s", c.flag, c.addr, err, out)
		}
	}
}

func readState(t *testing.T, path string) inventory.State {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := inventory.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if st.LastScan == nil {
		t.Fatalf("%s has no last_scan", path)
	}
	return st
}
