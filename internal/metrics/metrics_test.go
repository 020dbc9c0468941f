package metrics

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Scrape fetches and parses the registry's exposition.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

func labels(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return strings.Join(parts, ",")
}

// series maps "label=value,…" to the gauge's or counter's value.
func series(f *dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	if f == nil {
		return out
	}
	for _, m := range f.GetMetric() {
		if c := m.GetCounter(); c != nil {
			out[labels(m)] = c.GetValue()
			continue
		}
		out[labels(m)] = m.GetGauge().GetValue()
	}
	return out
}

func TestMetricsMatchTheInventory(t *testing.T) {
	st := fullState(t)
	m := New("v-test")
	if fams := scrape(t, m); fams["ds01_containers"] != nil || fams["ds01_detector_last_scan_timestamp_seconds"] != nil {
		t.Fatal("workload series before the first cycle")
	}
	m.Observe(summary.Summary{State: st, Duration: 40 * time.Millisecond, EventCounts: map[string]int{"detection.container_discovered": 6}})
	fams := scrape(t, m)

	if v := series(fams["ds01_detector_last_scan_timestamp_seconds"])[""]; v != float64(st.LastScan.UnixNano())/1e9 {
		t.Errorf("last scan %v", v)
	}
	if got := series(fams["ds01_detector_source_up"]); got["source=docker"] != 1 || got["source=gpu"] != 1 {
		t.Errorf("source_up %v", got)
	}
	if got := fams["ds01_detector_build_info"].GetMetric(); len(got) != 1 || got[0].GetGauge().GetValue() != 1 ||
		!strings.Contains(labels(got[0]), ",goversion=go") || !strings.Contains(labels(got[0]), ",revision=") || !strings.HasSuffix(labels(got[0]), ",version=v-test") {
		t.Errorf("build_info %v", got)
	}
	if c := fams["ds01_detector_events_total"].GetMetric()[0]; labels(c) != "event_type=detection.container_discovered" || c.GetCounter().GetValue() != 6 {
		t.Errorf("events_total %v", c)
	}
	if h := fams["ds01_detector_scan_duration_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() != 0.04 {
		t.Errorf("histogram %v", h)
	}
	// Containers, counted from the state independently.
	want := map[string]float64{}
	without := 0.0
	for _, c := range st.Containers {
		want["has_gpu="+strconv.FormatBool(c.HasGPU)+",origin="+c.Origin+",status="+c.Status]++
		if c.GPUWithoutAccess {
			without++
		}
	}
	if got := series(fams["ds01_containers"]); !equal(got, want) {
		t.Errorf("containers\n got %v\nwant %v", got, want)
	}
	if got := series(fams["ds01_workloads_gpu_without_access"])[""]; got != without || without != 1 {
		t.Errorf("without access %v (state %v)", got, without)
	}
	hp := map[string]float64{}
	for _, p := range st.HostProcesses {
		hp["user="+p.User]++
	}
	if got := series(fams["ds01_host_gpu_processes"]); !equal(got, hp) {
		t.Errorf("host processes %v, want %v", got, hp)
	}
	mem := map[string]float64{}
	for _, c := range st.Containers {
		for _, p := range c.GPUProcesses {
			if p.GPUMemoryMB != nil {
				mem["UUID="+p.GPUUUID+",gpu="+strconv.Itoa(p.GPUIndex)+",id="+c.ID+",type=container,user="+c.User] += float64(*p.GPUMemoryMB) * 1048576
			}
		}
	}
	for _, p := range st.HostProcesses {
		if p.GPUMemoryMB != nil {
			mem["UUID="+p.GPUUUID+",gpu="+strconv.Itoa(p.GPUIndex)+",id="+strconv.Itoa(p.Pid)+",type=host-process,user="+p.User] = float64(*p.GPUMemoryMB) * 1048576
		}
	}
	for _, p := range st.OtherGPUProcesses {
		mem["UUID="+p.GPUUUID+",gpu="+strconv.Itoa(p.GPUIndex)+",id="+strconv.Itoa(p.Pid)+",type=other-runtime,user="+p.User] = float64(*p.GPUMemoryMB) * 1048576
	}
	if got := series(fams["ds01_workload_gpu_memory_used_bytes"]); !equal(got, mem) || len(mem) != 5 {
		t.Errorf("gpu memory\n got %v\nwant %v", got, mem)
	}
	if fams["go_goroutines"] == nil || fams["process_resident_memory_bytes"] == nil {
		t.Error("runtime and process collectors missing")
	}

	// A workload that is gone loses its series.
	delete(st.Containers, "ddddddddddd4")
	st.HostProcesses = nil
	m.Observe(summary.Summary{State: st})
	fams = scrape(t, m)
	for k := range series(fams["ds01_workload_gpu_memory_used_bytes"]) {
		if strings.Contains(k, "ddddddddddd4") || strings.Contains(k, "host-process") {
			t.Errorf("stale series %s", k)
		}
	}
	if len(series(fams["ds01_host_gpu_processes"])) != 0 {
		t.Error("host process series kept")
	}
}

func equal(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Two other_gpu_processes entries with identical labels (one PID on two
// MIG devices of one GPU) are summed, not a failed scrape.
func TestIdenticalSeriesAreAggregated(t *testing.T) {
	m := New("test")
	mb := int64(100)
	st := inventory.Empty()
	p := inventory.GPUProcess{Pid: 7, GPUUUID: "GPU-1", GPUMemoryMB: &mb, Runtime: "podman", User: "eve"}
	st.OtherGPUProcesses = []inventory.GPUProcess{p, p}
	m.Observe(summary.Summary{State: st})
	fams := scrape(t, m)
	got := series(fams["ds01_workload_gpu_memory_used_bytes"])
	if len(got) != 1 {
		t.Fatalf("series: %v", got)
	}
	for _, v := range got {
		if v != 200*1024*1024 {
			t.Errorf("value %v, want the sum", v)
		}
	}
}

// A client that opens connections and never finishes a request is cut off
// after the header timeout.
func TestSlowClientsAreCutOff(t *testing.T) {
	m := New("test")
	m.ReadHeaderTimeout = 300 * time.Millisecond
	lns, err := m.Listen(Web{ListenAddresses: []string{"127.0.0.1:0"}, MaxConnections: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln := lns[0]
	defer ln.Close()
	var conns []net.Conn
	for i := 0; i < 200; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n")) // never ends the header
		conns = append(conns, c)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("connection %d still held open by the server: %v", i, err)
		}
	}
	// And the endpoint still answers.
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// Held versus used: per-workload utilisation and idle time, per-GPU
// figures, and per-user counters that only grow.
func TestUtilizationMetrics(t *testing.T) {
	m := New("test")
	pct := func(v int) *int { return &v }
	mb := int64(1024)
	now := inventory.NewTime(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	idleSince := inventory.NewTime(now.Add(-90 * time.Minute))
	st := inventory.Empty()
	st.LastScan = &now
	st.GPUs["GPU-0"] = inventory.GPU{Index: 3, UtilizationPercent: pct(40), MemoryUsedMB: &mb}
	st.Containers["abc123def456"] = inventory.Container{ID: "abc123def456", User: "alice", GPUIdleSince: &idleSince, GPUIdle: true,
		GPUProcesses: []inventory.GPUProcess{{Pid: 1, GPUUUID: "GPU-0", SMUtilPercent: pct(2)}, {Pid: 2, GPUUUID: "GPU-0", SMUtilPercent: pct(1)}}}
	st.Containers["def456abc123"] = inventory.Container{ID: "def456abc123", User: "bob",
		GPUProcesses: []inventory.GPUProcess{{Pid: 3, GPUUUID: "GPU-1", SMUtilPercent: nil}}}
	for i := 0; i < 2; i++ {
		m.Observe(summary.Summary{State: st, UserGPUSeconds: map[string]summary.GPUSeconds{"alice": {Held: 30, Busy: 0}, "bob": {Held: 30, Busy: 30}}})
	}
	fams := scrape(t, m)
	want := map[string]map[string]float64{
		"ds01_workload_gpu_utilization_ratio": {`UUID=GPU-0,gpu=3,id=abc123def456,type=container,user=alice`: 0.03},
		"ds01_workload_gpu_idle_seconds":      {`id=abc123def456,type=container,user=alice`: 5400, `id=def456abc123,type=container,user=bob`: 0},
		"ds01_workload_gpu_idle":              {`id=abc123def456,type=container,user=alice`: 1, `id=def456abc123,type=container,user=bob`: 0},
		"ds01_gpu_utilization_ratio":          {`UUID=GPU-0,gpu=3`: 0.4},
		"ds01_gpu_memory_used_bytes":          {`UUID=GPU-0,gpu=3`: 1024 * 1024 * 1024},
		"ds01_user_gpu_held_seconds_total":    {`user=alice`: 60, `user=bob`: 60},
		"ds01_user_gpu_busy_seconds_total":    {`user=alice`: 0, `user=bob`: 60},
	}
	for name, w := range want {
		got := series(fams[name])
		for k, v := range got {
			got[k] = float64(int(v*1000+0.5)) / 1000
		}
		if !equal(got, w) {
			t.Errorf("%s: %v, want %v", name, got, w)
		}
	}
}

// Every workload is named by ds01_workload_info, and its per-GPU series
// carry dcgm-exporter's gpu and UUID; running containers with GPU access
// have their grant.
func TestWorkloadInfoAndAllocation(t *testing.T) {
	m := New("test")
	s := realisticSummary(t)
	m.Observe(s)
	fams := scrape(t, m)
	st := s.State
	info := map[string]float64{}
	for _, c := range st.Containers {
		info["id="+c.ID+",image="+c.Image+",name="+c.Name+",origin="+c.Origin+",type=container,user="+c.User] = 1
	}
	info["id=7001,image=,name=python,origin=,type=host-process,user=bob"] = 1
	info["id=7002,image=,name=a.out,origin=,type=host-process,user=4242"] = 1
	info["id=8001,image=,name=python,origin=podman,type=other-runtime,user=erin"] = 1
	if got := series(fams["ds01_workload_info"]); !equal(got, info) {
		t.Errorf("workload_info\n got %v\nwant %v", got, info)
	}
	// alice's container names two MIG slots; bob's devcontainer has
	// --gpus all (six GPUs on this host); dave's is granted one but has
	// exited; sneaky has no grant.
	alloc := map[string]float64{"id=aaaaaaaaaaa1,type=container,user=alice": 2, "id=bbbbbbbbbbb2,type=container,user=bob": 6}
	if got := series(fams["ds01_workload_gpus_allocated"]); !equal(got, alloc) {
		t.Errorf("gpus_allocated %v, want %v", got, alloc)
	}
	util := map[string]float64{
		"UUID=" + gpuUUID(0) + ",gpu=0,id=ddddddddddd4,type=container,user=unknown": 0.88,
		"UUID=" + gpuUUID(1) + ",gpu=1,id=bbbbbbbbbbb2,type=container,user=bob":     0,
		"UUID=" + gpuUUID(2) + ",gpu=2,id=7001,type=host-process,user=bob":          0.97,
	}
	if got := series(fams["ds01_workload_gpu_utilization_ratio"]); !equal(got, util) {
		t.Errorf("utilization\n got %v\nwant %v", got, util)
	}
	if got := series(fams["ds01_gpu_utilization_ratio"]); len(got) != 6 || got["UUID="+gpuUUID(1)+",gpu=1"] != 0.97 {
		t.Errorf("device utilization %v", got)
	}
}

// The GPU index of a workload's series is the gpus map's; without the GPU
// in the map, the process's own.
func TestWorkloadGPUIndex(t *testing.T) {
	m := New("test")
	mb := int64(10)
	st := inventory.Empty()
	st.GPUs["GPU-a"] = inventory.GPU{Index: 7}
	st.HostProcesses["1"] = inventory.HostProcess{Pid: 1, User: "u", GPUUUID: "GPU-a", GPUIndex: 3, GPUMemoryMB: &mb}
	st.HostProcesses["2"] = inventory.HostProcess{Pid: 2, User: "u", GPUUUID: "GPU-b", GPUIndex: 4, GPUMemoryMB: &mb}
	m.Observe(summary.Summary{State: st})
	want := map[string]float64{"UUID=GPU-a,gpu=7,id=1,type=host-process,user=u": 10 << 20, "UUID=GPU-b,gpu=4,id=2,type=host-process,user=u": 10 << 20}
	if got := series(scrape(t, m)["ds01_workload_gpu_memory_used_bytes"]); !equal(got, want) {
		t.Errorf("%v, want %v", got, want)
	}
}

// Label values the daemon did not choose may hold bytes that are not
// UTF-8 (a user taken from a path, a command line): the scrape still
// succeeds, with the bytes replaced.
func TestInvalidUTF8LabelValues(t *testing.T) {
	m := New("test")
	mb := int64(1)
	bad := "al\xffice"
	st := inventory.Empty()
	st.Containers["abc123def456"] = inventory.Container{ID: "abc123def456", Name: "n\xfe", Image: "i\xfd", User: bad, Origin: "raw-docker", Status: "running", HasGPU: true,
		GPUProcesses: []inventory.GPUProcess{{Pid: 1, GPUUUID: "GPU-0", GPUMemoryMB: &mb}}}
	st.HostProcesses["9"] = inventory.HostProcess{Pid: 9, User: bad, Cmdline: "/opt/\xff/run x", GPUUUID: "GPU-0", GPUMemoryMB: &mb}
	st.HostProcesses["10"] = inventory.HostProcess{Pid: 10, User: "al\xfeice", GPUUUID: "GPU-0", GPUMemoryMB: &mb}
	m.Observe(summary.Summary{State: st, UserGPUSeconds: map[string]summary.GPUSeconds{bad: {Held: 1}}})
	fams := scrape(t, m)
	if got := series(fams["ds01_host_gpu_processes"]); got["user=al\uFFFDice"] != 2 {
		t.Errorf("host processes %v", got)
	}
	if got := series(fams["ds01_workload_info"]); got["id=9,image=,name=run,origin=,type=host-process,user=al\uFFFDice"] != 1 {
		t.Errorf("info %v", got)
	}
	if got := series(fams["ds01_user_gpu_held_seconds_total"]); got["user=al\uFFFDice"] != 1 {
		t.Errorf("held %v", got)
	}
}

// A running container's cgroup and network series and its idle verdict;
// nothing for what is unknown, nothing for a stopped container.
func TestActivityMetrics(t *testing.T) {
	m := New("test")
	now := inventory.NewTime(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	since := inventory.NewTime(now.Add(-25 * time.Minute))
	f := func(v float64) *float64 { return &v }
	n := func(v int64) *int64 { return &v }
	st := inventory.Empty()
	st.LastScan = &now
	st.Containers["abc123def456"] = inventory.Container{ID: "abc123def456", User: "alice", Status: "running",
		CPUUsageSeconds: f(12.5), MemoryBytes: n(1 << 20), NetRxBytes: n(300), NetTxBytes: n(400), IdleSince: &since,
		IdlePolicy: &inventory.IdlePolicy{Group: "researcher"}}
	st.Containers["def456abc123"] = inventory.Container{ID: "def456abc123", User: "bob", Status: "running",
		CPUUsageSeconds: f(1), IdlePolicy: &inventory.IdlePolicy{Source: "flags"}}
	st.Containers["0123456789ab"] = inventory.Container{ID: "0123456789ab", User: "carl", Status: "exited"}
	m.Observe(summary.Summary{State: st})
	fams := scrape(t, m)
	want := map[string]map[string]float64{
		"ds01_workload_cpu_usage_seconds_total": {`id=abc123def456,type=container,user=alice`: 12.5, `id=def456abc123,type=container,user=bob`: 1},
		"ds01_workload_memory_bytes":            {`id=abc123def456,type=container,user=alice`: 1 << 20},
		"ds01_workload_network_bytes_total": {`direction=rx,id=abc123def456,type=container,user=alice`: 300,
			`direction=tx,id=abc123def456,type=container,user=alice`: 400},
		"ds01_workload_idle_seconds": {`group=researcher,id=abc123def456,type=container,user=alice`: 1500,
			`group=,id=def456abc123,type=container,user=bob`: 0},
	}
	for name, w := range want {
		if got := series(fams[name]); !equal(got, w) {
			t.Errorf("%s: %v, want %v", name, got, w)
		}
	}
}

// The state's unattributed_seconds per GPU (accounting mode) is a counter.
func TestUnattributedSecondsPerGPU(t *testing.T) {
	m := New("test")
	st := inventory.Empty()
	st.GPUs["GPU-a"] = inventory.GPU{Index: 0, UnattributedSeconds: 0.8}
	st.GPUs["GPU-b"] = inventory.GPU{Index: 1}
	m.Observe(summary.Summary{State: st})
	fams := scrape(t, m)
	got := series(fams["ds01_gpu_unattributed_seconds_total"])
	if got["UUID=GPU-a,gpu=0"] != 0.8 || got["UUID=GPU-b,gpu=1"] != 0 || len(got) != 2 {
		t.Errorf("ds01_gpu_unattributed_seconds_total: %v", got)
	}
}
