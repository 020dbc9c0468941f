//go:build integration

package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// attacker holds n keep-alive connections to addr open until the file stop
// exists, each with a request that gets a 401, and opens a new one
// whenever the server closes one. It prints "ready" once the first n are
// made, and at the end how many connections it opened.
const attacker = `
import os, resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port = sys.argv[1].rsplit(":", 1)
n, stop = int(sys.argv[2]), sys.argv[3]
req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic d3Jvbmc6d3Jvbmc=\r\n\r\n"
conns, opened, failed = [], 0, 0
def connect():
    global opened, failed
    try:
        s = socket.create_connection((host, int(port)), timeout=2)
        s.setblocking(False)
        s.send(req)
        opened += 1
        return s
    except OSError:
        failed += 1
        return None
conns = [connect() for _ in range(n)]
print("ready", flush=True)
while not os.path.exists(stop):
    for i, s in enumerate(conns):
        alive = s is not None
        if alive:
            try:
                if s.recv(65536) == b"":
                    alive = False
            except BlockingIOError:
                pass
            except OSError:
                alive = False
        if not alive:
            if s is not None:
                s.close()
            conns[i] = connect()
    time.sleep(0.05)
print("opened", opened, "failed", failed, flush=True)
`

// Nothing blinds the daemon: under prlimit --nofile=1024, an unprivileged
// user holding 1,100 keep-alive connections to the metrics endpoint (each
// with a 401) and opening new ones as they are closed does not keep the
// state from being written (five writes while the attack holds), no running
// GPU process is reported exited, the daemon never runs out of descriptors,
// and a scrape with the right credentials succeeds once the attack ends.
// How long the writes and the scrape took is logged, not asserted (issue
// 21 asks for a scrape within 10 s; a busy machine can be slower, and a
// blinded daemon never gets there).
// floodHang is how long the flood test waits for what a blinded daemon
// would never do.
const floodHang = 60 * time.Second

func TestConnectionFloodDoesNotBlindTheDaemon(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the attacker runs as nobody ('sudo make test')")
	}
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web.yml")
	os.WriteFile(webConfig, []byte(fmt.Sprintf("basic_auth_users:\n  prom: %s\n", hash)), 0o644)

	gpuProc := exec.Command("sleep", "600") // the running GPU process
	if err := gpuProc.Start(); err != nil {
		t.Fatal(err)
	}
	defer gpuProc.Process.Kill()
	lib, ctl := stubNVML(t)
	script(t, ctl, gpuProc.Process.Pid, 1000, "50")
	f := newFiles(t, dir)
	addr := freeAddr(t)
	p := startDaemonUnder(t, []string{"DS01_NVML_STUB=" + ctl}, []string{"prlimit", "--nofile=1024:1024", "--"},
		f.args("--docker-host", "unix://"+filepath.Join(dir, "none.sock"), "--nvml-library", lib, "--interval", "1s",
			"--web.listen-address", addr, "--web.config.file", webConfig)...)
	discovered := func() bool {
		for _, e := range f.Events() {
			if e.EventType == event.HostProcessDiscovered {
				return true
			}
		}
		return false
	}
	testutil.Eventually(t, 20*time.Second, "the GPU process discovered", discovered)

	// The attack, from an unprivileged user, until the daemon has written
	// the state five more times (or the hang guard runs out).
	stopDir, err := os.MkdirTemp("", "ds01-flood") // the attacker, nobody, can look in
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(stopDir)
	os.Chmod(stopDir, 0o755)
	stop := filepath.Join(stopDir, "stop")
	attack := exec.Command("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-", addr, "1100", stop)
	attack.Stdin = strings.NewReader(attacker)
	out, _ := attack.StdoutPipe()
	var attackOut strings.Builder
	attack.Stderr = &attackOut
	if err := attack.Start(); err != nil {
		t.Fatal(err)
	}
	defer attack.Process.Kill()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		attack.Process.Kill()
		t.Fatalf("attacker: %q %s", lines.Text(), attackOut.String())
	}
	began := time.Now()
	var scans []time.Time
	maxFDs := 0
	wrote := testutil.Poll(floodHang, func() bool {
		if st, err := inventory.Read(f.StatePath); err == nil && st.LastScan != nil && (len(scans) == 0 || !st.LastScan.Equal(scans[len(scans)-1])) {
			scans = append(scans, st.LastScan.Time)
		}
		if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid)); err == nil {
			maxFDs = max(maxFDs, len(fds))
		}
		return len(scans) > 5 // the first one seen may predate the attack
	})
	os.WriteFile(stop, nil, 0o644)
	for lines.Scan() {
		attackOut.WriteString(lines.Text() + "\n")
	}
	if err := attack.Wait(); err != nil {
		t.Fatalf("attacker: %v\n%s", err, attackOut.String())
	}
	ended := time.Now()
	var maxGap time.Duration
	for i := 1; i < len(scans); i++ {
		maxGap = max(maxGap, scans[i].Sub(scans[i-1]))
	}
	t.Logf("attacker: %s; daemon's descriptors at most %d; %d state writes in %v of attack (interval 1 s), longest gap %v",
		strings.TrimSpace(attackOut.String()), maxFDs, len(scans), ended.Sub(began).Round(time.Millisecond), maxGap)
	var opened int
	for _, l := range strings.Split(attackOut.String(), "\n") {
		fmt.Sscanf(l, "opened %d", &opened)
	}
	if opened < 1100 {
		t.Errorf("the attacker opened only %d connections", opened)
	}
	if !wrote {
		t.Errorf("%d state writes during the attack, want 5 (the daemon blinded)", len(scans))
	}
	if maxFDs >= 1000 {
		t.Errorf("the daemon held %d descriptors of 1024", maxFDs)
	}
	// After the attack a scrape with the right credentials succeeds; a
	// refused or slow one is tried again.
	var lastErr error
	ok := testutil.Poll(floodHang, func() bool {
		req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
		req.SetBasicAuth("prom", "s3cret")
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			lastErr = err
			return false
		}
		resp.Body.Close()
		lastErr = fmt.Errorf("status %d", resp.StatusCode)
		return resp.StatusCode == 200
	})
	if !ok {
		t.Errorf("no successful scrape within %v of the attack ending: %v", floodHang, lastErr)
		p.cmd.Process.Signal(syscall.SIGQUIT) // the goroutines, for the log
		<-p.done
		if l := p.log(); len(l) > 20000 {
			t.Log(l[len(l)-20000:])
		}
	} else {
		t.Logf("scrape succeeded %v after the attack ended", time.Since(ended).Round(time.Millisecond))
	}
	for _, e := range f.Events() {
		if e.EventType == event.HostProcessExited {
			t.Errorf("a running GPU process was reported exited: %s", e.Details)
		}
	}
	if strings.Contains(p.log(), "too many open files") {
		t.Errorf("the daemon ran out of descriptors:\n%s", p.log())
	}
}
