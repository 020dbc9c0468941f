//go:build e2e

// Package e2e runs the installed daemon under a real systemd: it boots a
// Debian tree in systemd-nspawn, installs the build into it with
// `make install DESTDIR=…`, hands it a private dockerd's socket at
// /run/docker.sock, and drives it with systemctl and journalctl.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// TestMain removes the programs the tests built (testbin).
func TestMain(m *testing.M) { testbin.Main(m) }

// cacheTree is a debootstrapped bookworm kept between runs (46 s to make).
const cacheTree = "/var/cache/ds01-e2e/bookworm"

func repoRoot() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(self), "..", ".."))
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func ensureTree(t *testing.T) {
	if _, err := os.Stat(filepath.Join(cacheTree, "usr/lib/systemd/systemd")); err == nil {
		return
	}
	tmp := cacheTree + ".tmp"
	os.RemoveAll(tmp)
	os.MkdirAll(filepath.Dir(cacheTree), 0o755)
	t.Logf("debootstrapping %s (once)", cacheTree)
	sh(t, "debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,dbus,procps", "bookworm", tmp)
	if err := os.Rename(tmp, cacheTree); err != nil {
		t.Fatal(err)
	}
}

type machine struct {
	t      *testing.T
	root   string
	nspawn *exec.Cmd
	leader int
}

// in runs a command inside the booted container.
func (m *machine) in(args ...string) (string, error) {
	full := append([]string{"-t", strconv.Itoa(m.leader), "-a"}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	return string(out), err
}

func (m *machine) must(args ...string) string {
	m.t.Helper()
	out, err := m.in(args...)
	if err != nil {
		m.t.Fatalf("in container: %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (m *machine) prop(name string) string {
	m.t.Helper()
	return strings.TrimSpace(m.must("systemctl", "show", "--value", "-p", name, "ds01-detectord.service"))
}

func (m *machine) journal(args ...string) string {
	m.t.Helper()
	return m.must(append([]string{"journalctl", "--no-pager", "-u", "ds01-detectord.service"}, args...)...)
}

func (m *machine) statePath() string {
	return filepath.Join(m.root, "var/lib/ds01/workload-inventory.json")
}

func (m *machine) lastScan() string {
	b, err := os.ReadFile(m.statePath())
	if err != nil {
		return ""
	}
	var v struct {
		LastScan string `json:"last_scan"`
	}
	json.Unmarshal(b, &v)
	return v.LastScan
}

func (m *machine) scans() int {
	return strings.Count(m.journal("-o", "cat"), "scan complete:")
}

func boot(t *testing.T, root, dockerSock string) *machine {
	cmd := exec.Command("systemd-nspawn", "-D", root, "--register=no", "--keep-unit", "-b", "--console=passive",
		"--bind="+dockerSock+":/run/docker.sock")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &machine{t: t, root: root, nspawn: cmd}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) // nspawn shuts the container down
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
		}
	})
	// nspawn's first child can be its short-lived outer child (it sets up
	// the namespaces and exits once the container's PID 1 runs): find the
	// leader again whenever the one found is gone.
	findLeader := func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/user", pid)); err == nil {
				m.leader = pid
				return true
			}
		}
		return false
	}
	testutil.Eventually(t, 30*time.Second, "nspawn leader", findLeader)
	var state string
	if !testutil.Poll(60*time.Second, func() bool { // the bus comes up a moment after PID 1
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/user", m.leader)); err != nil {
			findLeader()
		}
		out, _ := m.in("systemctl", "is-system-running", "--wait")
		state = strings.TrimSpace(out)
		return state == "running" || state == "degraded"
	}) {
		t.Fatalf("container did not boot: %q\n%s", state, out.String())
	}
	return m
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

func setOpts(t *testing.T, root, opts string) {
	if err := os.WriteFile(filepath.Join(root, "etc/default/ds01-detectord"), []byte("DS01_DETECTORD_OPTS=\""+opts+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestUnderRealSystemd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the e2e test boots systemd-nspawn and must run as root")
	}
	ensureTree(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	sh(t, "cp", "-a", "--reflink=auto", cacheTree, root)
	t.Cleanup(func() { exec.Command("rm", "-rf", root).Run() })
	sh(t, "make", "-s", "-C", repoRoot(), "install", "DESTDIR="+root, "PREFIX=/usr")
	sh(t, "chroot", root, "groupadd", "--system", "docker")
	// A short watchdog so the SIGSTOP check is quick.
	dropin := filepath.Join(root, "etc/systemd/system/ds01-detectord.service.d")
	os.MkdirAll(dropin, 0o755)
	os.WriteFile(filepath.Join(dropin, "e2e.conf"), []byte("[Service]\nWatchdogSec=6s\nRestartSec=1s\n"), 0o644)
	setOpts(t, root, "--interval 60s")

	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()

	m := boot(t, root, filepath.Join(d.Dir, "docker.sock"))
	// The deploy steps.
	m.must("systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/ds01-detectord.conf")
	m.must("systemctl", "daemon-reload")
	if out, err := m.in("systemd-analyze", "verify", "/usr/lib/systemd/system/ds01-detectord.service"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	if ls := m.must("stat", "-c", "%U:%G %a", "/var/lib/ds01", "/var/log/ds01", "/var/log/ds01/events.jsonl"); ls != "root:docker 2775\nroot:docker 2775\nroot:docker 664\n" {
		t.Errorf("ownership: %q", ls)
	}

	// A host that never had the Python scanner: retiring it masks nothing.
	if b, err := os.ReadFile(filepath.Join(repoRoot(), "packaging/retire-legacy.sh")); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(filepath.Join(root, "opt/retire-legacy.sh"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if out := m.must("sh", "/opt/retire-legacy.sh"); strings.Contains(out, "masked") {
		t.Errorf("retire-legacy.sh on a host without the legacy units:\n%s", out)
	}
	for _, u := range []string{"ds01-workload-detector.timer", "ds01-workload-detector.service"} {
		if _, err := os.Lstat(filepath.Join(root, "etc/systemd/system", u)); !os.IsNotExist(err) {
			t.Errorf("%s was masked on a host that never had it (%v)", u, err)
		}
	}

	// Start returns once the state file exists.
	m.must("systemctl", "start", "ds01-detectord.service")
	if _, err := statefile.Load(m.statePath()); err != nil {
		t.Fatalf("state file after start: %v", err)
	}
	if _, err := os.Stat(m.statePath()); err != nil {
		t.Fatalf("systemctl start returned before the state file existed: %v", err)
	}
	if a := m.prop("ActiveState"); a != "active" {
		t.Fatalf("ActiveState=%s\n%s", a, m.journal())
	}
	if st := m.prop("StatusText"); !strings.Contains(st, "containers (0 with GPU)") || !strings.Contains(st, "docker ok") {
		t.Errorf("StatusText=%q", st)
	}

	// The metrics endpoint is on by default, on loopback, and the unit's
	// sandbox lets it listen (nspawn shares the host's network).
	if body := httpGet(t, "http://127.0.0.1:19400/metrics"); !strings.Contains(body, "ds01_detector_build_info{") || !strings.Contains(body, `ds01_detector_source_up{source="docker"} 1`) {
		t.Errorf("metrics on the default address:\n%.2000s", body)
	}

	// Reload rescans (on a 60 s interval; how long it took is logged, not
	// asserted: a busy machine can be slower).
	before := m.lastScan()
	reloaded := time.Now()
	m.must("systemctl", "reload", "ds01-detectord.service")
	testutil.Eventually(t, 30*time.Second, "rescan after systemctl reload", func() bool { return m.lastScan() != before })
	t.Logf("rescan %v after systemctl reload", time.Since(reloaded).Round(time.Millisecond))
	if !strings.Contains(m.journal("-o", "cat"), "rescan requested (SIGHUP)") {
		t.Error("journal does not show the rescan")
	}

	// Ten HUPs back to back: one scan, two at most (one running when the
	// rest arrive, one after it), and no more once they have settled.
	time.Sleep(500 * time.Millisecond) // the reload's summary line into the journal
	n0 := m.scans()
	pid := m.prop("MainPID")
	m.must("sh", "-c", `for i in 1 2 3 4 5 6 7 8 9 10; do kill -HUP "$1"; done`, "_", pid)
	testutil.Eventually(t, 30*time.Second, "a scan after 10 HUPs", func() bool { return m.scans() > n0 })
	time.Sleep(2 * time.Second) // room for extra scans, were the HUPs not coalesced
	if n := m.scans() - n0; n < 1 || n > 2 {
		t.Errorf("10 HUPs gave %d scans, want 1 or 2", n)
	}

	// With a short interval, a new container is in the state file by the
	// next tick.
	setOpts(t, root, "--interval 2s")
	m.must("systemctl", "restart", "ds01-detectord.service")
	id, err := d.Create(ctx, dockertest.Spec{Name: "e2e-new", Labels: map[string]string{"ds01.user": "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	short := id[:12]
	testutil.Eventually(t, 5*time.Second, "new container in the state file", func() bool {
		b, _ := os.ReadFile(m.statePath())
		return bytes.Contains(b, []byte(`"`+short+`"`))
	})
	testutil.Eventually(t, 5*time.Second, "CONTAINER_ID= journal query", func() bool {
		out, _ := m.in("journalctl", "--no-pager", "-o", "cat", "-u", "ds01-detectord.service", "CONTAINER_ID="+short)
		return strings.Contains(out, "container discovered: "+short)
	})
	verbose := m.must("journalctl", "--no-pager", "-o", "verbose", "-u", "ds01-detectord.service", "CONTAINER_ID="+short)
	for _, f := range []string{"EVENT_TYPE=detection.container_discovered", "USER=alice", "PRIORITY=6"} {
		if !strings.Contains(verbose, f) {
			t.Errorf("journal entry lacks %s:\n%s", f, verbose)
		}
	}
	// A user name with a newline cannot forge a journal entry: it stays one
	// field of one entry.
	forge, err := d.Create(ctx, dockertest.Spec{Name: "e2e-forge", Labels: map[string]string{"ds01.user": "eve\nFORGED ENTRY"}})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "forging container in the journal", func() bool {
		out, _ := m.in("journalctl", "--no-pager", "-o", "cat", "-u", "ds01-detectord.service", "CONTAINER_ID="+forge[:12])
		return strings.Contains(out, "container discovered: "+forge[:12])
	})
	for _, line := range strings.Split(strings.TrimSpace(m.journal("-o", "json")), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("journal entry: %v", err)
		}
		if msg, _ := entry["MESSAGE"].(string); strings.Contains(msg, "FORGED") {
			t.Errorf("forged journal entry: %q", msg)
		}
	}
	// One summary line per cycle: the count of summaries tracks last_scan.
	s0, l0 := m.scans(), m.lastScan()
	testutil.Eventually(t, 5*time.Second, "next tick", func() bool { return m.lastScan() != l0 })
	time.Sleep(300 * time.Millisecond)
	if n := m.scans() - s0; n < 1 || n > 2 {
		t.Errorf("%d summary lines for one tick", n)
	}

	// SIGSTOP: the watchdog kills and restarts the service.
	restarts, _ := strconv.Atoi(m.prop("NRestarts"))
	m.must("kill", "-STOP", m.prop("MainPID"))
	testutil.Eventually(t, 6*time.Second+20*time.Second, "watchdog restart", func() bool {
		n, _ := strconv.Atoi(m.prop("NRestarts"))
		return n > restarts && m.prop("ActiveState") == "active"
	})
	if !strings.Contains(m.journal("-o", "cat"), "Watchdog timeout") && !strings.Contains(m.must("journalctl", "--no-pager", "-o", "cat"), "Watchdog timeout") {
		t.Error("journal does not mention the watchdog timeout")
	}

	// Stop: success, and the state file parses.
	m.must("systemctl", "stop", "ds01-detectord.service")
	if r := m.prop("Result"); r != "success" {
		t.Errorf("Result=%s", r)
	}
	if _, err := statefile.Load(m.statePath()); err != nil {
		t.Errorf("state file after stop: %v", err)
	}

	sec, _ := m.in("systemd-analyze", "security", "--no-pager", "ds01-detectord.service")
	re := regexp.MustCompile(`Overall exposure level for ds01-detectord.service: ([0-9.]+)`)
	mm := re.FindStringSubmatch(sec)
	if mm == nil {
		t.Fatalf("no exposure figure:\n%s", sec)
	}
	t.Logf("systemd-analyze security: exposure %s", mm[1])
	fmt.Printf("E2E systemd-analyze security exposure: %s\n", mm[1])
	if v, _ := strconv.ParseFloat(mm[1], 64); v > 2.5 {
		t.Errorf("exposure %s above 2.5", mm[1])
	}
	for prop, want := range map[string]string{"MemoryMax": "268435456", "TasksMax": "128", "LimitNOFILE": "8192"} {
		if got := m.prop(prop); got != want {
			t.Errorf("%s=%s, want %s", prop, got, want)
		}
	}

	// --state-group under the shipped, capability-free unit: the state
	// file becomes 0640 root:docker through the setgid directory, and an
	// event log removed by rotation comes back with its group.
	setOpts(t, root, "--interval 2s --state-group docker")
	m.must("systemctl", "start", "ds01-detectord.service")
	if a := m.prop("ActiveState"); a != "active" {
		t.Fatalf("with --state-group: ActiveState=%s\n%s", a, m.journal())
	}
	if ls := m.must("stat", "-c", "%U:%G %a", "/var/lib/ds01/workload-inventory.json"); ls != "root:docker 640\n" {
		t.Errorf("state file with --state-group docker: %q\n%s", ls, m.journal("-o", "cat"))
	}
	m.must("rm", "/var/log/ds01/events.jsonl")
	rotated, err := d.Create(ctx, dockertest.Spec{Name: "e2e-after-rotation"})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "event after rotation", func() bool {
		b, _ := os.ReadFile(filepath.Join(root, "var/log/ds01/events.jsonl"))
		return bytes.Contains(b, []byte(rotated[:12]))
	})
	if ls := m.must("stat", "-c", "%U:%G %a", "/var/log/ds01/events.jsonl"); ls != "root:docker 664\n" {
		t.Errorf("event log recreated after rotation: %q", ls)
	}
	if j := m.journal("-o", "cat"); strings.Contains(j, "state file write failed") || strings.Contains(j, "event log append failed") {
		t.Errorf("write failures under the unit:\n%s", j)
	}
	m.must("systemctl", "stop", "ds01-detectord.service")
	// Uninstall removes what install put in place; the data stays.
	sh(t, "make", "-s", "-C", repoRoot(), "uninstall", "DESTDIR="+root, "PREFIX=/usr")
	for _, p := range []string{"usr/bin/ds01-detectord", "usr/bin/ds01-workloads", "usr/lib/systemd/system/ds01-detectord.service",
		"usr/lib/tmpfiles.d/ds01-detectord.conf", "etc/default/ds01-detectord", "usr/share/doc/ds01-detectord"} {
		if _, err := os.Stat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("uninstall left %s", p)
		}
	}
	if _, err := os.Stat(m.statePath()); err != nil {
		t.Errorf("uninstall removed the state: %v", err)
	}

}
