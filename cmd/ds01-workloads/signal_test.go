package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// hang is how long a command that should end at once may take before it
// counts as hanging: the failures these tests catch (a FIFO open waiting
// for a writer, a signal swallowed) never end at all, and how fast they
// end on a quiet machine (tens of ms) is logged, not asserted, since a
// busy machine can be slower.
const hang = 30 * time.Second

// exitsWithin waits for cmd to end, at most d; it kills a command still
// running then and fails the test.
func exitsWithin(t *testing.T, cmd *exec.Cmd, d time.Duration, what string) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("%s: %v", what, err)
		}
		return cmd.ProcessState.ExitCode(), time.Since(start)
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s: still running after %s (killed)", what, d)
		return 0, 0
	}
}

// A FIFO planted at the state path (the directory is the docker group's)
// makes every view that reads the state fail at once with an error that
// says what was found, instead of waiting for a writer for ever.
func TestStateFIFOFailsAtOnce(t *testing.T) {
	bin := testbin.Path(t, "cmd/ds01-workloads")
	fifo := filepath.Join(t.TempDir(), "workload-inventory.json")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--state-file", fifo},
		{"gpus", "--state-file", fifo},
		{"--json", "--state-file", fifo},
		{"report", "--state-file", fifo, "--events-file", td("events.jsonl"), "--seal-key="},
	} {
		cmd := exec.Command(bin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		rc, took := exitsWithin(t, cmd, hang, strings.Join(args, " "))
		if !strings.Contains(stderr.String(), "FIFO") || (args[0] != "report" && rc != 1) {
			t.Errorf("%v: exit %d, stderr %q; want the FIFO named", args, rc, stderr.String())
		}
		t.Logf("%v: exit %d after %s", args, rc, took.Round(time.Millisecond))
	}
}

// SIGTERM (and SIGINT) end ds01-workloads at once, in the views that run
// until stopped (--watch, events --follow) too.
func TestSignalEndsAtOnce(t *testing.T) {
	bin := testbin.Path(t, "cmd/ds01-workloads")
	dir := t.TempDir()
	state := filepath.Join(dir, "state.json")
	b, err := os.ReadFile(td("held.json"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(state, b, 0o644)
	events := filepath.Join(dir, "events.jsonl")
	os.WriteFile(events, []byte(`{"timestamp":"2026-02-04T10:01:00Z","event_type":"detection.container_exited","schema_version":"1","user":"carol"}`+"\n"), 0o644)
	for _, c := range []struct {
		args  []string
		ready string // a line of output that shows it is running
		sig   syscall.Signal
	}{
		{[]string{"--watch", "60", "--state-file", state}, "---", syscall.SIGTERM},
		{[]string{"events", "--follow", "--events-file", events}, "carol", syscall.SIGTERM},
		{[]string{"events", "--follow", "--events-file", events}, "carol", syscall.SIGINT},
	} {
		cmd := exec.Command(bin, c.args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan bool, 1)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if strings.Contains(sc.Text(), c.ready) {
					ready <- true
					break
				}
			}
			io.Copy(io.Discard, out)
		}()
		select {
		case <-ready:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%v printed no %q", c.args, c.ready)
		}
		cmd.Process.Signal(c.sig)
		rc, took := exitsWithin(t, cmd, hang, strings.Join(c.args, " "))
		t.Logf("%v: %v, exit %d after %s", c.args, c.sig, rc, took.Round(time.Millisecond))
	}

	// In the middle of a long read that no context stops: an event log of
	// 16 GiB of NUL bytes (sparse), read through as one long line.
	huge := filepath.Join(dir, "huge.jsonl")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(16 << 30)
	f.Close()
	cmd := exec.Command(bin, "events", "--events-file", huge)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Once it has the log open it is in the read (and past setting up its
	// signals).
	if !testutil.Poll(hang, func() bool { return hasOpen(cmd.Process.Pid, huge) }) {
		cmd.Process.Kill()
		t.Fatal("events never opened the log")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	rc, took := exitsWithin(t, cmd, hang, "events over a 16 GiB log")
	if rc != 128+int(syscall.SIGTERM) {
		t.Errorf("events over a 16 GiB log: exit %d, want %d", rc, 128+int(syscall.SIGTERM))
	}
	t.Logf("events over a 16 GiB log: exit %d after %s", rc, took.Round(time.Millisecond))
}

// hasOpen reports whether process pid has path open.
func hasOpen(pid int, path string) bool {
	fds, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", fd.Name())); err == nil && l == path {
			return true
		}
	}
	return false
}
