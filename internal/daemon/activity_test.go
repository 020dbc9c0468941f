//go:build integration

package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// sitePolicy writes the site's file as shipped, with the grace period cut
// to 0 (the containers here are seconds old), and a researcher members
// file naming rita.
func sitePolicy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../policy/testdata/resource-limits.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "grace_period_m: 30", "grace_period_m: 0", 1)
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "groups"), 0o755)
	os.WriteFile(filepath.Join(dir, "groups", "researcher.members"), []byte("# test\nrita\n"), 0o644)
	path := filepath.Join(dir, "resource-limits.yaml")
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// veth gives the container whose init is pid a network interface joined
// to one on the host, and returns the container side's address.
func veth(t *testing.T, pid int) string {
	t.Helper()
	host, peer := fmt.Sprintf("d1h%d", os.Getpid()%100000), fmt.Sprintf("d1c%d", os.Getpid()%100000)
	sub := 10 + os.Getpid()%200
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	run("ip", "link", "set", peer, "netns", strconv.Itoa(pid))
	run("ip", "addr", "add", fmt.Sprintf("10.222.%d.1/30", sub), "dev", host)
	run("ip", "link", "set", host, "up")
	ns := []string{"nsenter", "-t", strconv.Itoa(pid), "-n"}
	run(append(ns, "ip", "addr", "add", fmt.Sprintf("10.222.%d.2/30", sub), "dev", peer)...)
	run(append(ns, "ip", "link", "set", peer, "up")...)
	return fmt.Sprintf("10.222.%d.2", sub)
}

// send sends n bytes of UDP to addr's discard port, as fast as it can.
func send(t *testing.T, addr string, n int) {
	t.Helper()
	c, err := net.Dial("udp", addr+":9")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1400)
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := c.Write(buf); err != nil && !strings.Contains(err.Error(), "refused") {
			t.Fatal(err)
		}
	}
}

func f64(p *float64) string {
	if p == nil {
		return "null"
	}
	return strconv.FormatFloat(*p, 'f', 2, 64)
}

// The real daemon against a private dockerd: one container spinning a
// core, one sleeping, both read from their cgroups (no call to Docker's
// stats endpoint), the idle verdict under the site's policy file, traffic
// in a container's network namespace, and the policy reloaded on SIGHUP.
func TestActivityAndIdleVerdict(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	p, err := d.Proxy()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	spin, err := d.Create(ctx, dockertest.Spec{Name: "spin", Cmd: []string{"/helper", "spin"}, Start: true,
		Labels: map[string]string{"ds01.managed": "true", "ds01.user": "rita"}})
	if err != nil {
		t.Fatal(err)
	}
	sleep, err := d.Create(ctx, dockertest.Spec{Name: "sleep", Start: true,
		Labels: map[string]string{"ds01.managed": "true", "ds01.user": "nobody"}})
	if err != nil {
		t.Fatal(err)
	}

	// The machine is shared (other tests run beside this one): the
	// spinning container and its parent cgroup get the highest CPU weight,
	// so that it has a core to itself, the premise of "spinning one core".
	for _, dir := range []string{"/sys/fs/cgroup/cpu/docker", "/sys/fs/cgroup/cpu/docker/" + spin} {
		file := filepath.Join(dir, "cpu.shares")
		old, err := os.ReadFile(file)
		if err != nil {
			t.Logf("no v1 cpu weight to raise (%v); the figures below are under the machine's load", err)
			break
		}
		os.WriteFile(file, []byte("262144"), 0o644)
		t.Cleanup(func() { os.WriteFile(file, old, 0o644) })
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		t.Logf("load average: %s", strings.TrimSpace(string(b)))
	}

	policyPath := sitePolicy(t)
	log, logged := testutil.Logger()
	files := testutil.NewFiles(t)
	cfg := testConfig(files, p.Host, time.Second)
	cfg.PolicyFile = policyPath
	dm, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	hup := make(chan struct{}, 1) // main feeds it from SIGHUP
	go func() { dm.Run(runCtx, hup); close(done) }()
	t.Cleanup(func() { cancel(); <-done; dm.Close() })

	get := func(id string) inventory.Container { return files.State().Containers[id[:12]] }
	// Spinning: 80-120 % of a core; sleeping: at most 2 %. Both with memory.
	var spinPct, sleepPct []string
	defer func() {
		if t.Failed() {
			t.Logf("cpu_percent seen: spin %v, sleep %v", spinPct, sleepPct)
		}
	}()
	testutil.Eventually(t, 30*time.Second, "a spinning container at one core, a sleeping one near zero", func() bool {
		s, z := get(spin), get(sleep)
		if s.CPUPercent == nil || z.CPUPercent == nil {
			return false
		}
		if len(spinPct) == 0 || spinPct[len(spinPct)-1] != f64(s.CPUPercent) {
			spinPct, sleepPct = append(spinPct, f64(s.CPUPercent)), append(sleepPct, f64(z.CPUPercent))
		}
		return *s.CPUPercent >= 80 && *s.CPUPercent <= 120 && *z.CPUPercent <= 2 && s.MemoryBytes != nil && z.MemoryBytes != nil
	})
	s, z := get(spin), get(sleep)
	t.Logf("cpu_percent spin %s sleep %s; memory_bytes %d / %d; cpu_usage_seconds %s", f64(s.CPUPercent), f64(z.CPUPercent),
		*s.MemoryBytes, *z.MemoryBytes, f64(s.CPUUsageSeconds))
	if *s.MemoryBytes <= 0 || *z.MemoryBytes <= 0 || z.NetRxBytes == nil || z.BlkioReadBytes == nil {
		t.Errorf("memory %d / %d, net %v, blkio %v", *s.MemoryBytes, *z.MemoryBytes, z.NetRxBytes, z.BlkioReadBytes)
	}
	counts := p.Counts()
	if counts["GET /containers/json"] == 0 {
		t.Errorf("the proxy saw no list call: %v", counts)
	}
	for ep, n := range counts {
		if strings.Contains(ep, "stats") {
			t.Errorf("Docker's stats endpoint was called: %s ×%d", ep, n)
		}
	}

	// The sleeping container (default_group student: window 3) goes idle;
	// the spinning one (researcher) does not.
	testutil.Eventually(t, 30*time.Second, "the sleeping container idle", func() bool { return get(sleep).IdleSince != nil })
	z = get(sleep)
	if z.IdlePolicy == nil || z.IdlePolicy.Group != "student" || z.IdlePolicy.GroupSource != "default_group" || z.IdleSignals.CPU.Threshold != 2 ||
		z.IdleDeadline == nil || !z.IdleDeadline.Equal(z.IdleSince.Add(30*time.Minute)) {
		t.Errorf("sleep: policy %+v signals %+v deadline %v", z.IdlePolicy, z.IdleSignals, z.IdleDeadline)
	}
	s = get(spin)
	if s.IdleSince != nil || s.IdlePolicy == nil || s.IdlePolicy.Group != "researcher" || s.IdleSignals.CPU.Threshold != 3 || s.IdlePolicy.IdleDetectionWindow != 4 {
		t.Errorf("spin: idle since %v policy %+v signals %+v", s.IdleSince, s.IdlePolicy, s.IdleSignals)
	}

	// 5 MiB into the sleeping container's network namespace: one
	// interval carries it (sent again should it straddle two), and the
	// container is active again.
	addr := veth(t, z.Pid)
	var seen int64
	for try := 0; try < 3 && seen < 5<<20; try++ {
		send(t, addr, 5<<20+64<<10)
		testutil.Poll(5*time.Second, func() bool {
			if n := get(sleep).NetBytesPerInterval; n != nil && *n > seen {
				seen = *n
			}
			return seen >= 5<<20
		})
	}
	t.Logf("net_bytes_per_interval after 5 MiB: %d", seen)
	if seen < 5<<20 {
		t.Fatalf("net_bytes_per_interval %d, want ≥ 5 MiB", seen)
	}
	testutil.Eventually(t, 10*time.Second, "detection.active", func() bool { return get(sleep).IdleSince == nil })
	var seq []string
	for _, e := range files.Events() {
		if e.EventType != event.Idle && e.EventType != event.Active {
			continue
		}
		det := testutil.Details(t, e)
		if det["container_id"] == spin[:12] {
			t.Errorf("the spinning container got %s", e.EventType)
		}
		if det["container_id"] == sleep[:12] {
			seq = append(seq, e.EventType)
		}
	}
	if strings.Join(seq, ",") != event.Idle+","+event.Active {
		t.Errorf("events of the sleeping container: %v, want one idle then one active", seq)
	}

	// A policy edit and a rescan request (SIGHUP): researchers' CPU
	// threshold 200 % makes the spinning container idle.
	b, _ := os.ReadFile(policyPath)
	edited := strings.Replace(string(b), "cpu_idle_threshold: 3.0", "cpu_idle_threshold: 200", 2)
	if edited == string(b) {
		t.Fatal("no researcher threshold to edit")
	}
	os.WriteFile(policyPath, []byte(edited), 0o644)
	hup <- struct{}{}
	testutil.Eventually(t, 20*time.Second, "the new threshold applied and the spinning container idle", func() bool {
		s := get(spin)
		return s.IdleSignals != nil && s.IdleSignals.CPU.Threshold == 200 && s.IdleSince != nil
	})
	// A researcher's ds01-managed container: the group's 1 h timeout.
	if s := get(spin); s.IdleDeadline == nil || !s.IdleDeadline.Equal(s.IdleSince.Add(time.Hour)) || s.IdlePolicy.TimeoutSource != "group" {
		t.Errorf("researcher's deadline %v since %v policy %+v", s.IdleDeadline, s.IdleSince, s.IdlePolicy)
	}
	// A broken file: the last good policy stays, with one error.
	os.WriteFile(policyPath, []byte("groups: [\n"), 0o644)
	hup <- struct{}{}
	testutil.Eventually(t, 10*time.Second, "the error logged", func() bool { return strings.Contains(logged(), "keeping the last good policy") })
	scans := strings.Count(logged(), "scan complete")
	testutil.Eventually(t, 10*time.Second, "two more scans", func() bool { return strings.Count(logged(), "scan complete") >= scans+2 })
	if n := strings.Count(logged(), "keeping the last good policy"); n != 1 {
		t.Errorf("%d errors for one broken reload", n)
	}
	if s := get(spin); s.IdleSignals.CPU.Threshold != 200 || s.IdlePolicy.Group != "researcher" {
		t.Errorf("after a broken reload: %+v %+v", s.IdleSignals.CPU, s.IdlePolicy)
	}
	for ep, n := range p.Counts() {
		if strings.Contains(ep, "stats") {
			t.Errorf("Docker's stats endpoint was called: %s ×%d", ep, n)
		}
	}
}
