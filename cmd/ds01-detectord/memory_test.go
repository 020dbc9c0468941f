//go:build integration

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// vmHWM is a process's peak resident set, in kB.
func vmHWM(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return 0
}

// Docker content cannot make the daemon exceed the unit's MemoryMax: 30
// containers with 3,000 labels of 1 KB each (and 3,000 environment
// entries), the daemon inside a real memory cgroup limited to 256 MB (the
// v1 controller here, as MemoryMax=256M does under v2). It is not killed,
// its peak RSS stays under 150 MB, and the label that names the owner,
// after thousands of others, is still read.
func TestHugeDockerContentUnderMemoryMax(t *testing.T) {
	cgRoot := "/sys/fs/cgroup/memory"
	if _, err := os.Stat(filepath.Join(cgRoot, "memory.limit_in_bytes")); err != nil {
		t.Fatalf("no cgroup v1 memory controller at %s: %v", cgRoot, err)
	}
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	labels := map[string]string{"ds01.user": "alice"}
	var env []string
	for i := 0; i < 3000; i++ {
		labels[fmt.Sprintf("bulk.%04d", i)] = strings.Repeat("x", 1024)
		env = append(env, fmt.Sprintf("BULK%04d=%s", i, strings.Repeat("y", 1024)))
	}
	for i := 0; i < 30; i++ {
		if _, err := d.Create(ctx, dockertest.Spec{Name: fmt.Sprintf("huge%02d", i), Labels: labels, Env: env}); err != nil {
			t.Fatal(err)
		}
	}
	cg := filepath.Join(cgRoot, fmt.Sprintf("ds01-test-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.Poll(5*time.Second, func() bool { return os.Remove(cg) == nil }) })
	if err := os.WriteFile(filepath.Join(cg, "memory.limit_in_bytes"), []byte("268435456"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFiles(t, t.TempDir())
	p := startDaemonUnder(t, nil, []string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg},
		f.args("--docker-host", d.Host, "--interval", "1s")...)
	testutil.Eventually(t, 60*time.Second, "the 30 containers in the state", func() bool { return len(f.State().Containers) == 30 })
	p.waitScans(t, 5) // a few more cycles, and the event stream
	select {
	case <-p.done:
		t.Fatalf("the daemon died: %v\n%s", p.cmd.ProcessState, p.log())
	default:
	}
	peak := vmHWM(p.cmd.Process.Pid)
	failcnt, _ := os.ReadFile(filepath.Join(cg, "memory.failcnt"))
	t.Logf("peak RSS %.1f MB; cgroup memory.failcnt %s", float64(peak)/1024, strings.TrimSpace(string(failcnt)))
	if peak == 0 || peak >= 150*1024 {
		t.Errorf("peak RSS %d kB, want under 150 MB", peak)
	}
	for id, c := range f.State().Containers {
		if c.User != "alice" {
			t.Errorf("%s: user %q, want alice (ds01.user after 3,000 other labels)", id, c.User)
		}
	}
}
