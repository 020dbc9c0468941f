//go:build integration

package activity

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/testutil"
)

// BenchmarkRead300 reads 300 real v1 cgroups (cpuacct, memory, blkio),
// each holding a process in a network namespace of its own, as a
// reconciliation scan reads 300 running containers; it reports the CPU
// of one reading (getrusage) as cpu_ms/scan. make bench measures the same
// against real containers (activity_cpu_ms_per_scan).
func BenchmarkRead300(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("making cgroups and network namespaces needs root (sudo make bench)")
	}
	const n = 300
	base := "ds01-activity-bench-" + strconv.Itoa(os.Getpid())
	var cs []Container
	var cmds []*exec.Cmd
	var dirs []string
	b.Cleanup(func() { // the processes first, then their cgroups
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
		for _, dir := range dirs {
			testutil.Poll(time.Second, func() bool { return syscall.Rmdir(dir) != syscall.EBUSY })
		}
	})
	for i := 0; i < n; i++ {
		cmd := exec.Command("unshare", "-n", "sleep", "600")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		cmds = append(cmds, cmd)
		name := base + "-" + strconv.Itoa(i)
		for _, ctl := range []string{"cpuacct", "memory", "blkio"} {
			dir := filepath.Join("/sys/fs/cgroup", ctl, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				b.Skipf("no v1 cgroups here: %v", err)
			}
			dirs = append(dirs, dir)
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		cs = append(cs, Container{ID: strconv.Itoa(i), Pid: cmd.Process.Pid})
	}
	if !testutil.Poll(10*time.Second, func() bool { // unshare has exec'd sleep in its namespace
		for _, c := range cs {
			if comm, _ := os.ReadFile("/proc/" + strconv.Itoa(c.Pid) + "/comm"); string(comm) != "sleep\n" {
				return false
			}
		}
		return true
	}) {
		b.Fatal("unshare did not exec sleep within 10 s")
	}
	r := New("", "")
	if got := r.Read(cs, time.Now); len(got) != n || got["0"].RxBytes == nil || got["0"].MemoryBytes == nil {
		b.Fatalf("%d samples, first %+v", len(got), got["0"])
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b.ResetTimer()
	c0 := cpu()
	for i := 0; i < b.N; i++ {
		r.Read(cs, time.Now)
	}
	b.ReportMetric(float64((cpu()-c0).Microseconds())/1000/float64(b.N), "cpu_ms/scan")
}
