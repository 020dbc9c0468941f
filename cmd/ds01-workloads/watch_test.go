//go:build integration

package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/testbin"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// --watch in a real terminal: tmux runs it, the state file is replaced,
// the new row appears (with an hour's fallback interval: inotify),
// and Ctrl-C ends it with exit 0 and the screen restored.
func TestWatchInARealTerminal(t *testing.T) {
	dir := t.TempDir()
	bin := testbin.Path(t, "cmd/ds01-workloads")
	state := filepath.Join(dir, "state.json")
	src, err := os.ReadFile(td("held.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, src, 0o644); err != nil {
		t.Fatal(err)
	}
	tmux := newTmux(t, dir, 220, 50)
	// bash waits for it and records its exit status (the trap keeps the
	// shell itself alive through Ctrl-C; the program gets SIGINT as usual).
	rcFile := filepath.Join(dir, "rc")
	// The fallback interval is an hour: any redraw within the test comes
	// from the change notification.
	tmux("respawn-pane", "-k", "-t", "w", "bash -c 'trap true INT; "+bin+" --watch 1h --color never --state-file "+state+"; echo $? > "+rcFile+"; sleep 60'")
	screen := func() string { return tmux("capture-pane", "-p", "-t", "w") }
	testutil.Eventually(t, 10*time.Second, "first drawing", func() bool { return strings.Contains(screen(), "vsc-bob-proj-1234") })
	if alt := strings.TrimSpace(tmux("display-message", "-p", "-t", "w", "#{alternate_on}")); alt != "1" {
		t.Errorf("not on the alternate screen: %q", alt)
	}
	// The fixture's last scan is long past: the detector has stopped, and
	// the watch says so on the screen.
	if s := screen(); !strings.Contains(s, "WARNING: the last scan was") {
		t.Errorf("no staleness warning on the screen:\n%s", s)
	}

	// The detector rewrites the state: a new container.
	var st map[string]any
	json.Unmarshal(src, &st)
	cs := st["containers"].(map[string]any)
	nc := map[string]any{}
	for k, v := range cs["eeeeeeeeeee5"].(map[string]any) {
		nc[k] = v
	}
	nc["id"], nc["name"] = "123456789abc", "the-new-row"
	cs["123456789abc"] = nc
	b, _ := json.Marshal(st)
	os.WriteFile(state+".tmp", b, 0o644)
	if err := os.Rename(state+".tmp", state); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the new row", func() bool { return strings.Contains(screen(), "the-new-row") })

	tmux("send-keys", "-t", "w", "C-c")
	testutil.Eventually(t, 10*time.Second, "exit on Ctrl-C", func() bool {
		_, err := os.Stat(rcFile)
		return err == nil
	})
	if rc, _ := os.ReadFile(rcFile); strings.TrimSpace(string(rc)) != "0" {
		t.Errorf("exit status %q after Ctrl-C", rc)
	}
	if alt := strings.TrimSpace(tmux("display-message", "-p", "-t", "w", "#{alternate_on}")); alt != "0" {
		t.Errorf("alternate screen still on after Ctrl-C")
	}
	if s := screen(); strings.Contains(s, "the-new-row") || strings.Contains(s, "vsc-bob-proj") {
		t.Errorf("the screen was not restored:\n%s", s)
	}
}

// In a 60-column tmux pane no table line is longer than 60 columns (tmux
// joins wrapped lines in capture-pane -J, so a wrapped row shows as a long
// one), for the table, --wide, gpus and --watch; and --watch through a
// pipe writes no screen control codes.
func TestSixtyColumnPane(t *testing.T) {
	dir := t.TempDir()
	bin := testbin.Path(t, "cmd/ds01-workloads")
	tmux := newTmux(t, dir, 60, 60)
	state, _ := filepath.Abs(td("held.json"))
	for _, args := range []string{"", "--wide --all", "--by-user", "gpus", "--watch 1h"} {
		// stderr (the staleness warning) goes elsewhere: only the table is
		// on the screen.
		tmux("respawn-pane", "-k", "-t", "w", "bash -c '"+bin+" "+args+" --state-file "+state+" 2>/dev/null; echo END; sleep 60'")
		var screen string
		testutil.Eventually(t, 10*time.Second, "drawing of "+args, func() bool {
			screen = tmux("capture-pane", "-p", "-J", "-t", "w")
			return strings.Contains(screen, "last scan") || strings.Contains(screen, "END")
		})
		rows := 0
		for _, l := range strings.Split(screen, "\n") {
			if n := len([]rune(strings.TrimRight(l, " "))); n > 60 {
				t.Errorf("%q: a line of %d columns:\n%s", args, n, l)
			}
			if strings.Contains(l, "…") {
				rows++
			}
		}
		if rows == 0 {
			t.Errorf("%q: nothing was shortened:\n%s", args, screen)
		}
	}
	out, err := exec.Command("bash", "-c", "timeout 3 "+bin+" --watch 1 --state-file "+state+" 2>/dev/null | head -c 2000").Output()
	if err != nil || strings.Contains(string(out), "\x1b[?1049h") || strings.Contains(string(out), "\x1b") || !strings.Contains(string(out), "TYPE") {
		t.Errorf("--watch 1 | head -c 2000: %v\n%q", err, out)
	}
}

// newTmux starts a tmux server on a socket in dir with one session "w" of
// the given size, and returns a function that runs a tmux command against
// it. The server runs its panes' commands with /bin/sh whatever the
// user's login shell is (nologin for system users) and reads no
// configuration file.
func newTmux(t *testing.T, dir string, width, height int) func(args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux is needed for this test; 'make test' installs it")
	}
	sock := filepath.Join(dir, "tmux.sock")
	tmux := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("tmux", append([]string{"-f", os.DevNull, "-S", sock}, args...)...)
		cmd.Env = append(os.Environ(), "SHELL=/bin/sh")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	tmux("new-session", "-d", "-x", strconv.Itoa(width), "-y", strconv.Itoa(height), "-s", "w", "sh")
	t.Cleanup(func() { exec.Command("tmux", "-S", sock, "kill-server").Run() })
	tmux("set-option", "-g", "default-shell", "/bin/sh")
	return tmux
}
