package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/testutil"
)

func rssKB(pid int) int {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return -1
}

// Something other than a regular file planted at the state path or the
// events path (both live in directories the docker group can write) must
// neither hang the daemon before READY, nor make it read without bound,
// nor make it write through a link. It says so once per path and keeps
// going.
func TestPlantedFilesAtStateAndEventsPaths(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "root-only")
	const secretText = "root:only:secret\n"
	if err := os.WriteFile(secret, []byte(secretText), 0o600); err != nil {
		t.Fatal(err)
	}
	plants := []struct {
		name  string
		plant func(path string) error
		same  func(path string) bool
	}{
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o666) },
			func(p string) bool { fi, err := os.Lstat(p); return err == nil && fi.Mode()&os.ModeNamedPipe != 0 }},
		{"symlink to /dev/zero", func(p string) error { return os.Symlink("/dev/zero", p) },
			func(p string) bool { l, err := os.Readlink(p); return err == nil && l == "/dev/zero" }},
		{"symlink to a root-only file", func(p string) error { return os.Symlink(secret, p) },
			func(p string) bool {
				l, err := os.Readlink(p)
				b, _ := os.ReadFile(secret)
				return err == nil && l == secret && string(b) == secretText
			}},
		{"directory", func(p string) error { return os.Mkdir(p, 0o775) },
			func(p string) bool {
				es, err := os.ReadDir(p)
				fi, _ := os.Lstat(p)
				return err == nil && fi.IsDir() && len(es) == 0
			}},
	}
	for _, which := range []string{"state", "events"} {
		for _, pl := range plants {
			t.Run(which+" path/"+pl.name, func(t *testing.T) {
				f := testutil.NewFiles(t)
				target := f.StatePath
				if which == "events" {
					target = f.EventsPath
				}
				if err := pl.plant(target); err != nil {
					t.Fatal(err)
				}
				sock, notes := testutil.NotifySocket(t)
				start := time.Now()
				p := startDaemonEnv(t, []string{"NOTIFY_SOCKET=" + sock},
					"--state-file", f.StatePath, "--events-file", f.EventsPath, "--docker-host", "unix:///nonexistent/docker.sock",
					"--nvml-library", "/nonexistent/libnvidia-ml.so.1", "--interval", "200ms", "--scan-timeout", "2s")
				ready := false
				for !ready {
					select {
					case n, ok := <-notes:
						if !ok {
							t.Fatal("notify socket closed")
						}
						ready = strings.Contains(n, "READY=1")
					case <-time.After(10 * time.Second):
						t.Fatalf("no READY=1 within 10 s; log:\n%s", p.log())
					}
				}
				t.Logf("READY after %v", time.Since(start))
				p.waitScans(t, 3) // several more cycles
				if kb := rssKB(p.cmd.Process.Pid); kb <= 0 || kb > 100*1024 {
					t.Errorf("RSS %d kB", kb)
				}
				if !pl.same(target) {
					t.Errorf("the planted %s was changed or written through", pl.name)
				}
				log := p.log()
				if n := strings.Count(log, "not a regular file") + strings.Count(log, "refusing"); n < 1 {
					t.Errorf("no clear error about %s:\n%s", target, log)
				}
				var errLines int
				for _, l := range strings.Split(log, "\n") {
					if strings.Contains(l, "ERROR") && strings.Contains(l, target) {
						errLines++
					}
				}
				if errLines != 1 {
					t.Errorf("%d error lines name %s, want 1:\n%s", errLines, target, log)
				}
				if which == "events" { // the state file is still written
					if st := f.State(); st.LastScan == nil || st.Sources.Docker.OK {
						t.Errorf("state not written while the event log is refused: %+v", st.Sources)
					}
				}
			})
		}
	}
}

// --once reports a failed write in its exit status, so a cron job or a
// script notices.
func TestOnceExitsOneWhenAWriteFails(t *testing.T) {
	f := testutil.NewFiles(t)
	if err := os.Mkdir(f.StatePath, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(daemonBinary(t), "--once", "--seal-key", testSealKey, "--log-format", "console", "--state-file", f.StatePath, "--events-file", f.EventsPath,
		"--docker-host", "unix:///nonexistent/docker.sock", "--nvml-library", "/nonexistent/libnvidia-ml.so.1")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v\n%s", err, out)
	}
	os.Remove(f.StatePath)
	if out, err := exec.Command(daemonBinary(t), "--once", "--seal-key", testSealKey, "--log-format", "console", "--state-file", f.StatePath, "--events-file", f.EventsPath,
		"--docker-host", "unix:///nonexistent/docker.sock", "--nvml-library", "/nonexistent/libnvidia-ml.so.1").CombinedOutput(); err != nil {
		t.Fatalf("a good --once failed: %v\n%s", err, out)
	}
}
