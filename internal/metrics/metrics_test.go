package metrics

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
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
	b, err := os.ReadFile("../../cmd/ds01-workloads/testdata/full.json")
	if err != nil {
		t.Fatal(err)
	}
	st, err := inventory.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
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
	if got := series(fams["ds01_detector_build_info"]); got["version=v-test"] != 1 {
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
				mem["gpu_uuid="+p.GPUUUID+",id="+c.ID+",kind=container,user="+c.User] += float64(*p.GPUMemoryMB) * 1048576
			}
		}
	}
	for _, p := range st.HostProcesses {
		if p.GPUMemoryMB != nil {
			mem["gpu_uuid="+p.GPUUUID+",id="+strconv.Itoa(p.Pid)+",kind=host-process,user="+p.User] = float64(*p.GPUMemoryMB) * 1048576
		}
	}
	for _, p := range st.OtherGPUProcesses {
		mem["gpu_uuid="+p.GPUUUID+",id="+strconv.Itoa(p.Pid)+",kind=other-runtime,user="+p.User] = float64(*p.GPUMemoryMB) * 1048576
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

func TestAlertRules(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool (Debian package prometheus) is needed; 'make test' installs it")
	}
	docs := filepath.Join("..", "..", "docs")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = docs
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
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
	ln, err := m.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
	st.Containers["abc123def456"] = inventory.Container{ID: "abc123def456", User: "alice", GPUIdleSince: &idleSince,
		GPUProcesses: []inventory.GPUProcess{{Pid: 1, GPUUUID: "GPU-0", SMUtilPercent: pct(2)}, {Pid: 2, GPUUUID: "GPU-0", SMUtilPercent: pct(1)}}}
	st.Containers["def456abc123"] = inventory.Container{ID: "def456abc123", User: "bob",
		GPUProcesses: []inventory.GPUProcess{{Pid: 3, GPUUUID: "GPU-1", SMUtilPercent: nil}}}
	for i := 0; i < 2; i++ {
		m.Observe(summary.Summary{State: st, UserGPUSeconds: map[string]summary.GPUSeconds{"alice": {Held: 30, Busy: 0}, "bob": {Held: 30, Busy: 30}}})
	}
	fams := scrape(t, m)
	want := map[string]map[string]float64{
		"ds01_workload_gpu_utilization_ratio": {`gpu_uuid=GPU-0,id=abc123def456,kind=container,user=alice`: 0.03},
		"ds01_workload_gpu_idle_seconds":      {`id=abc123def456,kind=container,user=alice`: 5400, `id=def456abc123,kind=container,user=bob`: 0},
		"ds01_gpu_utilization_ratio":          {`gpu=3,gpu_uuid=GPU-0`: 0.4},
		"ds01_gpu_memory_used_bytes":          {`gpu=3,gpu_uuid=GPU-0`: 1024 * 1024 * 1024},
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
