package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// daemonBinary is the real daemon, built once per test process.
func daemonBinary(t *testing.T) string { return testbin.Path(t, "cmd/ds01-detectord") }

type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
}

func (p *proc) log() string { p.mu.Lock(); defer p.mu.Unlock(); return p.stderr.String() }

// waitScans waits until the daemon has logged n more completed cycles
// ("scan complete", one line each) than it had when called.
func (p *proc) waitScans(t *testing.T, n int) {
	t.Helper()
	from := countLines(p.log(), "scan complete")
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d more completed scans", n), func() bool {
		return countLines(p.log(), "scan complete") >= from+n
	})
}

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
	testbin.Clean()
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

// --web.listen-address "" (or --metrics-listen "") turns the endpoint off:
// no listening socket at all.
func TestNoListenerWhenTurnedOff(t *testing.T) {
	dir := t.TempDir()
	for i, off := range []string{"--web.listen-address=", "--metrics-listen="} {
		p := startDaemon(t, "--docker-host", "unix://"+filepath.Join(dir, "none.sock"), "--state-file", filepath.Join(dir, fmt.Sprint(i, "s.json")),
			"--events-file", filepath.Join(dir, fmt.Sprint(i, "e.jsonl")), "--interval", "1h", off)
		if !testutil.Poll(10*time.Second, func() bool { return strings.Contains(p.log(), "scan complete") }) {
			t.Fatalf("no cycle:\n%s", p.log())
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
	if !testutil.Poll(10*time.Second, func() bool {
		return len(listeningTCP(q.cmd.Process.Pid)) > 0 && strings.Contains(q.log(), "scan complete")
	}) {
		t.Fatalf("no listener with --web.listen-address:\n%s", q.log())
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
	if !testutil.Poll(10*time.Second, func() bool { return strings.Count(p.log(), "scan complete") >= 3 }) {
		t.Fatalf("no cycles:\n%s", p.log())
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
	b, err := inventory.ReadBytes(path)
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

// files are a daemon's state file and event log.
type files struct{ *testutil.Files }

func newFiles(t *testing.T, dir string) *files { return &files{testutil.FilesIn(t, dir)} }

func (f *files) args(extra ...string) []string {
	args := []string{"--state-file", f.StatePath, "--events-file", f.EventsPath}
	if !slices.Contains(extra, "--seal-key") {
		args = append(args, "--seal-key", testSealKey)
	}
	return withListen(append(args, extra...))
}

// eventLines reads a whole event log, failing on a partial or bad line.
func eventLines(t *testing.T, path string) []event.Envelope {
	t.Helper()
	return testutil.ReadLog(t, path)
}

func countLines(log, substr string) int { return strings.Count(log, substr) }

// stubNVML builds the stand-in libnvidia-ml (testdata/nvmlstub) and returns
// its path and the control file that scripts it ("PID MIB SM" lines).
func stubNVML(t *testing.T) (lib, ctl string) {
	t.Helper()
	dir := t.TempDir()
	lib = filepath.Join(dir, "libnvidia-ml.so.1")
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", lib, filepath.Join("testdata", "nvmlstub", "nvmlstub.c")).CombinedOutput(); err != nil {
		t.Fatalf("building the stand-in NVML: %v\n%s", err, out)
	}
	ctl = filepath.Join(dir, "gpu.txt")
	return lib, ctl
}

func script(t *testing.T, ctl string, pid, mib int, sm string) {
	t.Helper()
	tmp := ctl + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%d %d %s\n", pid, mib, sm)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, ctl); err != nil {
		t.Fatal(err)
	}
}

func metric(t *testing.T, addr, name string) (float64, bool) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(?:\{[^}]*\})? ([0-9.e+-]+)$`).FindStringSubmatch(string(b))
	if m == nil {
		return 0, false
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v, true
}
