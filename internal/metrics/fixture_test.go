package metrics

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// realisticSummary is a busy host: the containers, host processes and
// other-runtime process of ds01-workloads' full.json (MIG devices, a
// container using a GPU it was not granted, an unknown user), five GPUs
// with their utilisation, per-process SM samples, an idle workload, and a
// cycle's events and GPU-seconds.
func realisticSummary(t *testing.T) summary.Summary {
	t.Helper()
	st := fullState(t)
	pct := func(v int) *int { return &v }
	mb := func(v int64) *int64 { return &v }
	total := int64(81559)
	for i, u := range []int{0, 97, 40, 12, 55} {
		st.GPUs[gpuUUID(i)] = inventory.GPU{Index: i, Name: "NVIDIA H100 80GB HBM3", MemoryTotalMB: &total,
			MemoryUsedMB: mb(int64(1000 * (i + 1))), UtilizationPercent: pct(u), MIGMode: i == 3}
	}
	// One more GPU, no process on it, memory unknown.
	st.GPUs["GPU-55555555-5555-5555-5555-555555555555"] = inventory.GPU{Index: 5, Name: "NVIDIA H100 80GB HBM3", UtilizationPercent: pct(0)}
	idle := inventory.NewTime(st.LastScan.Add(-3*time.Hour - 12*time.Minute))
	c := st.Containers["bbbbbbbbbbb2"] // bob's devcontainer: holds GPU 1, idle
	c.GPUProcesses[0].SMUtilPercent = pct(0)
	c.GPUIdleSince = &idle
	st.Containers[c.ID] = c
	// Its activity: quiet, idle by the site's rule for 40 minutes (a
	// researcher), and alice's running container busy on CPU.
	f := func(v float64) *float64 { return &v }
	since := inventory.NewTime(st.LastScan.Add(-40 * time.Minute))
	c.CPUPercent, c.CPUUsageSeconds, c.MemoryBytes = f(0.4), f(812.5), mb(2<<30)
	c.NetRxBytes, c.NetTxBytes, c.NetBytesPerInterval = mb(52_000_000), mb(3_000_000), mb(1200)
	c.IdleSince, c.IdleScans = &since, 80
	c.IdlePolicy = &inventory.IdlePolicy{Source: "/opt/ds01-infra/config/runtime/resource-limits.yaml", Group: "researcher", GroupSource: "members-file",
		TimeoutSource: "container_types.devcontainer (null: exempt)", IdleDetectionWindow: 4, GracePeriodM: 30}
	c.IdleSignals = &inventory.IdleSignals{GPU: &inventory.IdleSignal{Value: f(0), Threshold: 5, Idle: true},
		CPU: inventory.IdleSignal{Value: f(0.4), Threshold: 3, Idle: true}, Network: inventory.IdleSignal{Value: f(1200), Threshold: 1 << 20, Idle: true}}
	st.Containers[c.ID] = c
	for k, a := range st.Containers {
		if a.User == "alice" && a.Status == "running" {
			a.CPUPercent, a.CPUUsageSeconds, a.MemoryBytes = f(99.5), f(51234.25), mb(14<<30)
			a.NetRxBytes, a.NetTxBytes = mb(7_000_000_000), mb(1_000_000)
			a.IdlePolicy = &inventory.IdlePolicy{Source: "flags", TimeoutSource: "none", IdleDetectionWindow: 3, GracePeriodM: 30}
			st.Containers[k] = a
			break
		}
	}
	c = st.Containers["ddddddddddd4"] // sneaky: busy on GPU 0 without a grant
	c.GPUProcesses[0].SMUtilPercent = pct(88)
	st.Containers[c.ID] = c
	p := st.HostProcesses["7001"] // bob's training run
	p.SMUtilPercent = pct(97)
	st.HostProcesses["7001"] = p
	return summary.Summary{
		State: st, Duration: 41 * time.Millisecond, Excluded: 2, DroppedEvents: 0,
		EventCounts:    map[string]int{"detection.container_discovered": 6, "detection.gpu_idle": 1},
		UserGPUSeconds: map[string]summary.GPUSeconds{"alice": {Held: 30}, "bob": {Held: 60, Busy: 30}, "unknown": {Held: 30, Busy: 30}},
	}
}

// gpuUUID is the UUID full.json gives GPU i: GPU-00000000-0000-….
func gpuUUID(i int) string {
	d := strconv.Itoa(i)
	r := strings.Repeat
	return "GPU-" + r(d, 8) + "-" + r(d, 4) + "-" + r(d, 4) + "-" + r(d, 4) + "-" + r(d, 12)
}

// realisticEndpoint serves the realistic summary the way the daemon does
// (Listen, plain HTTP on a loopback port) and returns the exposition.
func realisticEndpoint(t *testing.T) string {
	t.Helper()
	m := New("v1.2.3")
	m.APIRequests = func() map[string]uint64 {
		return map[string]uint64{"GET /containers/json": 12, "GET /containers/{id}/json": 6}
	}
	m.Observe(realisticSummary(t))
	lns, err := m.Listen(Web{ListenAddresses: []string{"127.0.0.1:0"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lns[0].Close()
	resp, err := http.Get("http://" + lns[0].Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %v %v", resp.Status, err)
	}
	return string(b)
}

// fullState is ds01-workloads' full.json fixture: every kind of workload.
func fullState(t *testing.T) inventory.State {
	t.Helper()
	b, err := inventory.ReadBytes("../../cmd/ds01-workloads/testdata/full.json")
	if err != nil {
		t.Fatal(err)
	}
	st, err := inventory.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
