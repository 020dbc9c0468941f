//go:build integration

package main

import (
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

// attacker holds n keep-alive connections to addr open for secs seconds,
// each with a request that gets a 401, and opens a new one whenever the
// server closes one. It prints how many connections it opened.
const attacker = `
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port = sys.argv[1].rsplit(":", 1)
n, secs = int(sys.argv[2]), float(sys.argv[3])
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
end = time.time() + secs
conns = [connect() for _ in range(n)]
while time.time() < end:
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
// state from being written every interval, no running GPU process is
// reported exited, the daemon never runs out of descriptors, and a scrape
// with the right credentials succeeds within 10 s of the attack ending.
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

	// The attack, 12 s, from an unprivileged user.
	attack := exec.Command("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-", addr, "1100", "12")
	attack.Stdin = strings.NewReader(attacker)
	var attackOut strings.Builder
	attack.Stdout, attack.Stderr = &attackOut, &attackOut
	if err := attack.Start(); err != nil {
		t.Fatal(err)
	}
	var scans []time.Time
	maxFDs := 0
	for deadline := time.Now().Add(11 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if st, err := inventory.Read(f.StatePath); err == nil && st.LastScan != nil && (len(scans) == 0 || !st.LastScan.Equal(scans[len(scans)-1])) {
			scans = append(scans, st.LastScan.Time)
		}
		if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid)); err == nil {
			maxFDs = max(maxFDs, len(fds))
		}
	}
	if err := attack.Wait(); err != nil {
		t.Fatalf("attacker: %v\n%s", err, attackOut.String())
	}
	ended := time.Now()
	t.Logf("attacker: %s; daemon's descriptors at most %d; %d state writes in 11 s", strings.TrimSpace(attackOut.String()), maxFDs, len(scans))
	var opened int
	fmt.Sscanf(attackOut.String(), "opened %d", &opened)
	if opened < 1100 {
		t.Errorf("the attacker opened only %d connections", opened)
	}
	for i := 1; i < len(scans); i++ {
		if gap := scans[i].Sub(scans[i-1]); gap > 3*time.Second {
			t.Errorf("no state write for %v during the attack (interval 1 s)", gap)
		}
	}
	if len(scans) < 8 {
		t.Errorf("%d state writes in 11 s at a 1 s interval", len(scans))
	}
	if maxFDs >= 1000 {
		t.Errorf("the daemon held %d descriptors of 1024", maxFDs)
	}
	// Within 10 s of the attack's end: each try may take what is left of
	// them (a loaded machine can be slow to answer), and a refused one is
	// tried again.
	var lastErr error
	ok := testutil.Poll(10*time.Second-time.Since(ended), func() bool {
		left := 10*time.Second - time.Since(ended)
		if left <= 0 {
			return false
		}
		req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
		req.SetBasicAuth("prom", "s3cret")
		resp, err := (&http.Client{Timeout: left}).Do(req)
		if err != nil {
			lastErr = err
			return false
		}
		resp.Body.Close()
		lastErr = fmt.Errorf("status %d", resp.StatusCode)
		return resp.StatusCode == 200
	})
	if !ok {
		t.Errorf("no successful scrape within 10 s of the attack ending: %v", lastErr)
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
