//go:build integration

package activity

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

// The real cgroup v1 hierarchy of this machine, and the real v2 one at
// /sys/fs/cgroup/unified (hybrid: only cpu.stat is kept there), each with
// a process spinning in a cgroup of its own.
func TestRealCgroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("making cgroups needs root (sudo make test)")
	}
	spin := func(t *testing.T) *exec.Cmd {
		cmd := exec.Command("sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	mk := func(t *testing.T, dir string, pid int) {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Skipf("cannot make a cgroup here: %v", err)
		}
		t.Cleanup(func() {
			testutil.Poll(time.Second, func() bool { return syscall.Rmdir(dir) != syscall.EBUSY })
		})
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The cgroup's CPU time over half a second must match what the
	// process's own /proc/<pid>/stat counted (its only process), whatever
	// the load on the machine.
	ticks := func(t *testing.T, pid int) uint64 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		n, _, ok := ProcessCPU(b)
		if !ok {
			t.Fatalf("stat %q", b)
		}
		return n
	}
	check := func(t *testing.T, r *Reader, pid int, wantMem bool) {
		read := func() Sample {
			return r.Read([]Container{{ID: id, Pid: pid}}, time.Now)[id]
		}
		// Until the process has had 0.1 s of CPU (half a second on a quiet
		// machine; longer when others share its cores).
		a, ta := read(), ticks(t, pid)
		for deadline := time.Now().Add(20 * time.Second); ticks(t, pid)-ta < 10 && time.Now().Before(deadline); {
			<-time.After(50 * time.Millisecond)
		}
		b, tb := read(), ticks(t, pid)
		if a.CPUNanos == nil || b.CPUNanos == nil {
			t.Fatalf("cpu unknown: %s / %s", got(a), got(b))
		}
		cg := float64(*b.CPUNanos-*a.CPUNanos) / 1e9
		own := float64(tb-ta) / 100 // USER_HZ
		t.Logf("spinning process: cgroup %.3f s, its stat %.3f s of CPU; %s", cg, own, got(b))
		if own < 0.05 || cg < own*0.8-0.03 || cg > own*1.2+0.03 {
			t.Errorf("cgroup CPU %.3f s, the process's own %.3f s", cg, own)
		}
		if (b.MemoryBytes != nil) != wantMem {
			t.Errorf("memory %s, want known=%v", i64(b.MemoryBytes), wantMem)
		}
		if b.RxBytes == nil {
			t.Errorf("network unknown")
		}
	}
	t.Run("v1", func(t *testing.T) {
		cmd := spin(t)
		name := "ds01-activity-test-" + strconv.Itoa(os.Getpid())
		for _, ctl := range []string{"cpuacct", "memory", "blkio"} {
			mk(t, filepath.Join("/sys/fs/cgroup", ctl, name), cmd.Process.Pid)
		}
		r := New("", "")
		r.hostNet = "other" // the spinning shell shares the test's namespace
		check(t, r, cmd.Process.Pid, true)
		if d := r.dirs[id]; d.v2 || !strings.HasSuffix(d.cpu, "/"+name+"/cpuacct.usage") {
			t.Errorf("dirs %+v", d)
		}
	})
	t.Run("v2", func(t *testing.T) {
		if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err != nil {
			t.Skip("no v2 hierarchy at /sys/fs/cgroup/unified")
		}
		cmd := spin(t)
		dir := filepath.Join("/sys/fs/cgroup/unified", "ds01-activity-test-"+strconv.Itoa(os.Getpid()))
		mk(t, dir, cmd.Process.Pid)
		// The process's /proc/<pid>/cgroup is hybrid: a fixture /proc with
		// only its 0:: line makes the reader take the v2 layout.
		root := t.TempDir()
		pdir := filepath.Join(root, strconv.Itoa(cmd.Process.Pid))
		os.MkdirAll(pdir, 0o755)
		os.WriteFile(filepath.Join(pdir, "cgroup"), []byte("0::/"+filepath.Base(dir)+"\n"), 0o644)
		os.Symlink("/proc/"+strconv.Itoa(cmd.Process.Pid)+"/net", filepath.Join(pdir, "net"))
		r := New(root, "/sys/fs/cgroup/unified")
		check(t, r, cmd.Process.Pid, false) // memory is a v1 controller here
	})
}
