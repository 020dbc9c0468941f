package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/testutil"
)

// A second daemon on the same state file exits 1 at once, naming the
// first one's PID, and leaves the first running and writing.
func TestSecondDaemonOnTheSameStateFile(t *testing.T) {
	dir := t.TempDir()
	f := newFiles(t, dir)
	noDocker := "unix://" + filepath.Join(dir, "none.sock")
	first := startDaemon(t, f.args("--docker-host", noDocker, "--interval", "300ms")...)
	testutil.Eventually(t, 20*time.Second, "the first daemon writes its state", func() bool {
		_, err := os.Stat(f.StatePath)
		return err == nil
	})
	var out, errb bytes.Buffer
	rc := runBinary(t, &out, &errb, "--docker-host", noDocker, "--state-file", f.StatePath, "--events-file", f.EventsPath,
		"--log-format", "console", "--web.listen-address", "")
	if rc != 1 {
		t.Fatalf("second daemon: exit %d, want 1\n%s", rc, errb.String())
	}
	pid := strconv.Itoa(first.cmd.Process.Pid)
	if !strings.Contains(errb.String(), "PID "+pid) {
		t.Errorf("the refusal does not name PID %s:\n%s", pid, errb.String())
	}
	// --once takes the lock too; --once --dry-run writes nothing and runs.
	errb.Reset()
	if rc := runBinary(t, &out, &errb, "--docker-host", noDocker, "--state-file", f.StatePath, "--events-file", f.EventsPath,
		"--log-format", "console", "--once"); rc != 1 {
		t.Errorf("--once beside a daemon: exit %d, want 1", rc)
	}
	out.Reset()
	if rc := runBinary(t, &out, &errb, "--docker-host", noDocker, "--state-file", f.StatePath, "--events-file", f.EventsPath,
		"--log-format", "console", "--once", "--dry-run"); rc != 0 || !bytes.Contains(out.Bytes(), []byte(`"containers"`)) {
		t.Errorf("--once --dry-run beside a daemon: exit %d, output %q", rc, out.String())
	}
	select {
	case <-first.done:
		t.Fatalf("the first daemon stopped:\n%s", first.log())
	default:
	}
}

// A state file a newer version wrote is left byte for byte as it was, and
// the daemon exits 1 saying why; --once --dry-run still runs, read-only.
func TestStateFromANewerVersion(t *testing.T) {
	dir := t.TempDir()
	f := newFiles(t, dir)
	body := []byte(`{"schema_version": 99, "containers": {}, "something_new": {"x": 1}}` + "\n")
	if err := os.WriteFile(f.StatePath, body, 0o644); err != nil {
		t.Fatal(err)
	}
	noDocker := "unix://" + filepath.Join(dir, "none.sock")
	for _, mode := range [][]string{nil, {"--once"}} {
		var out, errb bytes.Buffer
		rc := runBinary(t, &out, &errb, append([]string{"--docker-host", noDocker, "--state-file", f.StatePath, "--events-file", f.EventsPath,
			"--log-format", "console", "--web.listen-address", ""}, mode...)...)
		if rc != 1 || !strings.Contains(errb.String(), "schema_version 99") || !strings.Contains(errb.String(), "newer") {
			t.Errorf("%v: exit %d, want 1 with a message\n%s", mode, rc, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if rc := runBinary(t, &out, &errb, "--docker-host", noDocker, "--state-file", f.StatePath, "--events-file", f.EventsPath,
		"--log-format", "console", "--once", "--dry-run"); rc != 0 || !bytes.Contains(out.Bytes(), []byte(`"schema_version": 2`)) {
		t.Errorf("--once --dry-run: exit %d, output %q\n%s", rc, out.String(), errb.String())
	}
	if b, _ := os.ReadFile(f.StatePath); !bytes.Equal(b, body) {
		t.Errorf("state file changed: %q", b)
	}
	if m, _ := filepath.Glob(f.StatePath + ".corrupt-*"); len(m) != 0 {
		t.Errorf("moved aside: %v", m)
	}
	if _, err := os.Stat(f.EventsPath); err == nil {
		t.Error("an event log was written")
	}
}

// runBinary runs the built daemon to its end and returns its exit status.
func runBinary(t *testing.T, stdout, stderr *bytes.Buffer, args ...string) int {
	t.Helper()
	cmd := exec.Command(daemonBinary(t), append([]string{"--seal-key", testSealKey}, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}
