package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// workloadsBinary is ds01-workloads, built once per test process.
func workloadsBinary(t *testing.T) string { return testbin.Path(t, "cmd/ds01-workloads") }

func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(workloadsBinary(t), args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

// The sealed records, end to end: a real daemon (stand-in NVML, a host GPU
// process that starts and ends) seals its lines and its state; verify
// passes on them, and flags a line appended with 360,000 held seconds, an
// edited line and a deleted line, each of which report (as root, with the
// key) leaves out and warns about. A state entry forged while the daemon
// was stopped gives no event and no counter after the restart, and one
// error line.
func TestSealedRecords(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key", "seal.key")
	gpuProc := exec.Command("sleep", "600")
	if err := gpuProc.Start(); err != nil {
		t.Fatal(err)
	}
	defer gpuProc.Process.Kill()
	pid := gpuProc.Process.Pid
	lib, ctl := stubNVML(t)
	script(t, ctl, pid, 1000, "50")
	f := newFiles(t, dir)
	args := f.args("--docker-host", "unix://"+filepath.Join(dir, "none.sock"), "--nvml-library", lib, "--interval", "300ms",
		"--gpu-interval", "100ms", "--gpu-confirm-after", "300ms", "--seal-key", key)
	env := []string{"DS01_NVML_STUB=" + ctl}
	p := startDaemonEnv(t, env, args...)
	count := func(typ string) int {
		n := 0
		for _, e := range f.Events() {
			if e.EventType == typ {
				n++
			}
		}
		return n
	}
	testutil.Eventually(t, 20*time.Second, "discovered", func() bool { return count(event.HostProcessDiscovered) == 1 })
	p.waitScans(t, 3) // some GPU time
	os.WriteFile(ctl, nil, 0o644)
	testutil.Eventually(t, 20*time.Second, "exited", func() bool { return count(event.HostProcessExited) == 1 })
	// A state written after the append, which no longer carries the line.
	testutil.Eventually(t, 20*time.Second, "a state with no unlogged lines", func() bool {
		s, err := inventory.Read(f.StatePath)
		return err == nil && len(s.UnloggedEvents) == 0
	})
	// main's signals: SIGHUP rescans; SIGTERM stops after the cycle, and
	// says so.
	p.cmd.Process.Signal(syscall.SIGHUP)
	testutil.Eventually(t, 10*time.Second, "a rescan", func() bool { return strings.Contains(p.log(), "rescan requested (SIGHUP)") })
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	if l := p.log(); !strings.Contains(l, "\tstopping") || !strings.Contains(l, `"signal": "terminated"`) || p.cmd.ProcessState.ExitCode() != 0 {
		t.Errorf("SIGTERM: exit %d, log:\n%s", p.cmd.ProcessState.ExitCode(), l)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key: %v %v", fi, err)
	}
	sealedLog, _ := os.ReadFile(f.EventsPath)
	sealedState, _ := os.ReadFile(f.StatePath)
	for _, l := range bytes.Split(bytes.TrimSpace(sealedLog), []byte("\n")) {
		if !seal.HasSeal(l) {
			t.Fatalf("an unsealed line from the daemon: %s", l)
		}
	}
	if !bytes.Contains(sealedState, []byte(`"_seal": "v2:`)) {
		t.Fatal("the state file is not sealed")
	}
	if out, errb, rc := cli(t, "verify", "--seal-key", key, "--events-file", f.EventsPath, "--state-file", f.StatePath); rc != 0 {
		t.Fatalf("verify of the daemon's own records: exit %d\n%s%s", rc, out, errb)
	}
	lines := strings.SplitAfter(strings.TrimSpace(string(sealedLog)), "\n")
	exitLine := -1
	for i, l := range lines {
		if strings.Contains(l, event.HostProcessExited) {
			exitLine = i
		}
	}
	forged := `{"timestamp":"` + time.Now().UTC().Format(time.RFC3339) + `","event_type":"detection.container_exited","schema_version":"1","user":"alice","source":"ds01-detectord","details":{"container_id":"aaaaaaaaaaaa","gpu_allocated_seconds":360000,"gpu_held_seconds":360000,"gpu_busy_seconds":360000}}` + "\n"
	user := strings.TrimSpace(strings.Split(strings.Split(lines[exitLine], `"user":"`)[1], `"`)[0])
	for _, c := range []struct {
		name, log  string
		gone       string // a user the report must not show
		warn, flag string
	}{
		{"appended", string(sealedLog) + forged, "alice", "not the daemon's sealed lines", "not sealed"},
		{"edited", strings.Join(lines[:exitLine], "") + strings.Replace(lines[exitLine], `"gpu_held_seconds":`, `"gpu_held_seconds":360000`, 1) + strings.Join(lines[exitLine+1:], "") + "\n", user,
			"not the daemon's sealed lines", "seal does not match"},
		{"deleted", strings.Join(lines[:exitLine], "") + strings.Join(lines[exitLine+1:], ""), "", "", "deleted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.WriteFile(f.EventsPath, []byte(c.log), 0o644)
			out, errb, rc := cli(t, "verify", "--seal-key", key, "--events-file", f.EventsPath, "--state-file", f.StatePath)
			if rc != 1 || !strings.Contains(out, "FAIL") || !strings.Contains(out, c.flag) {
				t.Errorf("verify: exit %d\n%s%s", rc, out, errb)
			}
			out, errb, rc = cli(t, "report", "--seal-key", key, "--events-file", f.EventsPath, "--state-file", f.StatePath, "--csv")
			if rc != 0 {
				t.Fatalf("report: exit %d %s", rc, errb)
			}
			if c.gone != "" && strings.Contains(out, c.gone+",") {
				t.Errorf("report counts the %s line:\n%s", c.name, out)
			}
			if strings.Contains(out, "360000") || strings.Contains(out, "3600") && c.name != "deleted" && strings.Contains(out, c.gone) {
				t.Errorf("report counts forged seconds:\n%s", out)
			}
			if !strings.Contains(errb, "warning") || c.warn != "" && !strings.Contains(errb, c.warn) {
				t.Errorf("report warned %q", errb)
			}
			if c.name == "deleted" && !strings.Contains(errb, "deleted") {
				t.Errorf("report did not warn of the deleted line: %q", errb)
			}
			// --include-unverified counts them.
			if c.name == "appended" {
				out, _, _ = cli(t, "report", "--seal-key", key, "--events-file", f.EventsPath, "--state-file", f.StatePath, "--csv", "--include-unverified")
				if !strings.Contains(out, "alice,") {
					t.Errorf("--include-unverified left the line out:\n%s", out)
				}
			}
		})
	}
	// Without the key (not root): the totals are said to be unverified.
	os.WriteFile(f.EventsPath, sealedLog, 0o644)
	if _, errb, _ := cli(t, "report", "--seal-key", filepath.Join(dir, "none.key"), "--events-file", f.EventsPath, "--state-file", f.StatePath); strings.Count(errb, "unverified") != 1 {
		t.Errorf("no key: %q", errb)
	}

	// A state entry forged while the daemon is stopped: alice's "running"
	// process with 360,000 held seconds, renamed over the state file.
	var st map[string]any
	plain := seal.Unseal(sealedState)
	if err := jsonUnmarshal(plain, &st); err != nil {
		t.Fatal(err)
	}
	st["host_processes"] = map[string]any{"999999": map[string]any{"pid": 999999, "user": "alice", "uid": 1000, "cmdline": "python train.py",
		"start_time": 1, "gpu_held_seconds": 360000, "gpu_busy_seconds": 360000, "gpu_allocated_seconds": 360000, "detected_at": "2026-01-01T00:00:00Z"}}
	b, _ := jsonMarshal(st)
	tmp := f.StatePath + ".forged"
	os.WriteFile(tmp, b, 0o644)
	os.Rename(tmp, f.StatePath)
	before := len(f.Events())
	p = startDaemonEnv(t, env, args...)
	testutil.Eventually(t, 20*time.Second, "a state written after the restart", func() bool {
		s, err := inventory.Read(f.StatePath)
		return err == nil && s.SealHead != ""
	})
	p.waitScans(t, 3)
	for _, e := range f.Events()[before:] {
		if e.User == "alice" || strings.Contains(string(e.Details), "360000") {
			t.Errorf("an event from the forged state: %s %s", e.EventType, e.Details)
		}
	}
	s, _ := inventory.Read(f.StatePath)
	if _, ok := s.HostProcesses["999999"]; ok {
		t.Error("the forged entry is in the new state")
	}
	if n := strings.Count(p.log(), "state file not trusted"); n != 1 {
		t.Errorf("%d 'not trusted' lines:\n%s", n, p.log())
	}
	if n := strings.Count(p.log(), "ERROR"); n != 1 {
		t.Errorf("%d error lines:\n%s", n, p.log())
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
func jsonMarshal(v any) ([]byte, error)   { return json.MarshalIndent(v, "", "  ") }
