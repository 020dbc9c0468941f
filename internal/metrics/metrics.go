// Package metrics exposes the detector and the workloads to Prometheus, on
// a registry of its own. Workload series are rebuilt from each cycle's
// inventory as a whole, so a scrape never mixes two cycles and the series of
// a workload that is gone disappear with it.
package metrics

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Metrics holds the registry and the latest cycle.
type Metrics struct {
	Registry *prometheus.Registry

	duration prometheus.Histogram
	events   *prometheus.CounterVec
	dropped  prometheus.Counter
	held     *prometheus.CounterVec
	busy     *prometheus.CounterVec

	// Timeouts of the HTTP server: a client that holds a connection open
	// without finishing its request is cut off.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration

	mu   sync.RWMutex
	last *summary.Summary

	// APIRequests, when set, reports the Docker API requests made so far,
	// by endpoint.
	APIRequests func() map[string]uint64
}

var (
	descLastScan = prometheus.NewDesc("ds01_detector_last_scan_timestamp_seconds",
		"Unix time of the last completed scan (the state file's last_scan).", nil, nil)
	descSourceUp = prometheus.NewDesc("ds01_detector_source_up",
		"1 when the source answered in the last scan, 0 when it failed.", []string{"source"}, nil)
	descContainers = prometheus.NewDesc("ds01_containers",
		"Containers by origin, Docker status and GPU access.", []string{"origin", "status", "has_gpu"}, nil)
	descHostProcs = prometheus.NewDesc("ds01_host_gpu_processes",
		"Confirmed host GPU processes (outside containers) per user.", []string{"user"}, nil)
	descGPUMem = prometheus.NewDesc("ds01_workload_gpu_memory_used_bytes",
		"GPU memory used per GPU and workload: kind container (id: 12-char container ID), host-process or other-runtime (id: PID).", []string{"gpu_uuid", "kind", "id", "user"}, nil)
	descWorkloadUtil = prometheus.NewDesc("ds01_workload_gpu_utilization_ratio",
		"SM utilisation (0-1) of a workload's processes on one GPU, summed and capped at 1, from NVML's per-process samples since the last scan. Absent when unknown (MIG, NOT_SUPPORTED).", []string{"gpu_uuid", "kind", "id", "user"}, nil)
	descWorkloadIdle = prometheus.NewDesc("ds01_workload_gpu_idle_seconds",
		"How long a workload holding GPU memory has been below --gpu-idle-threshold on every GPU it holds; 0 when active.", []string{"kind", "id", "user"}, nil)
	descDeviceUtil = prometheus.NewDesc("ds01_gpu_utilization_ratio",
		"Whole-device utilisation (0-1) from nvmlDeviceGetUtilizationRates.", []string{"gpu_uuid", "gpu"}, nil)
	descDeviceMem = prometheus.NewDesc("ds01_gpu_memory_used_bytes",
		"GPU memory used on the device, all processes together (nvmlDeviceGetMemoryInfo).", []string{"gpu_uuid", "gpu"}, nil)
	descWithoutAccess = prometheus.NewDesc("ds01_workloads_gpu_without_access",
		"Containers using a GPU their configuration does not grant.", nil, nil)
	descExcluded = prometheus.NewDesc("ds01_detector_excluded_gpu_processes",
		"GPU processes of system accounts (UID < 1000) left out of host processes by name in the last scan.", nil, nil)
	descAPIRequests = prometheus.NewDesc("ds01_detector_docker_api_requests_total",
		"Docker API requests made, by endpoint (a steady cycle makes one GET /containers/json).", []string{"endpoint"}, nil)
)

// New builds the registry, with the Go runtime and process collectors.
func New(version string) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ds01_detector_scan_duration_seconds", Help: "Duration of scan cycles.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 25},
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ds01_detector_events_total", Help: "Events queued for the event log, by type.",
		}, []string{"event_type"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ds01_detector_events_dropped_total", Help: "Unwritten event lines dropped because the queue for an unwritable event log was over its cap.",
		}),
		held: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ds01_user_gpu_held_seconds_total", Help: "GPU-seconds a user's workloads held (time x GPUs they had processes on).",
		}, []string{"user"}),
		busy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ds01_user_gpu_busy_seconds_total", Help: "GPU-seconds a user's workloads were at or above --gpu-idle-threshold.",
		}, []string{"user"}),
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second,
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "ds01_detector_build_info", Help: "Always 1; the version is a label.",
		ConstLabels: prometheus.Labels{"version": version}})
	info.Set(1)
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.duration, m.events, m.dropped, m.held, m.busy, info, (*inventoryCollector)(m),
	)
	return m
}

// Observe records a finished cycle. Call it once per cycle.
func (m *Metrics) Observe(s summary.Summary) {
	m.duration.Observe(s.Duration.Seconds())
	for t, n := range s.EventCounts {
		m.events.WithLabelValues(t).Add(float64(n))
	}
	m.dropped.Add(float64(s.DroppedEvents))
	for u, d := range s.UserGPUSeconds {
		m.held.WithLabelValues(u).Add(d.Held)
		m.busy.WithLabelValues(u).Add(d.Busy)
	}
	m.mu.Lock()
	m.last = &s
	m.mu.Unlock()
}

// Listen opens addr at once, so that a bad or taken address fails at
// startup, and serves /metrics on it in the background.
func (m *Metrics) Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: m.ReadHeaderTimeout, ReadTimeout: m.ReadTimeout,
		WriteTimeout: m.WriteTimeout, IdleTimeout: m.IdleTimeout, MaxHeaderBytes: 64 << 10}
	go srv.Serve(ln)
	return ln, nil
}

// inventoryCollector renders the last cycle's inventory at scrape time.
type inventoryCollector Metrics

func (c *inventoryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLastScan, descSourceUp, descContainers, descHostProcs, descGPUMem, descWithoutAccess, descAPIRequests, descExcluded, descWorkloadUtil, descWorkloadIdle, descDeviceUtil, descDeviceMem} {
		ch <- d
	}
}

func up(h inventory.SourceHealth) float64 {
	if h.OK {
		return 1
	}
	return 0
}

func (c *inventoryCollector) Collect(ch chan<- prometheus.Metric) {
	if c.APIRequests != nil {
		for ep, n := range c.APIRequests() {
			ch <- prometheus.MustNewConstMetric(descAPIRequests, prometheus.CounterValue, float64(n), ep)
		}
	}
	c.mu.RLock()
	s := c.last
	c.mu.RUnlock()
	if s == nil {
		return // no cycle yet
	}
	st := s.State
	if st.LastScan != nil {
		ch <- prometheus.MustNewConstMetric(descLastScan, prometheus.GaugeValue, float64(st.LastScan.UnixNano())/1e9)
	}
	ch <- prometheus.MustNewConstMetric(descSourceUp, prometheus.GaugeValue, up(st.Sources.Docker), "docker")
	ch <- prometheus.MustNewConstMetric(descSourceUp, prometheus.GaugeValue, up(st.Sources.GPU), "gpu")

	ch <- prometheus.MustNewConstMetric(descExcluded, prometheus.GaugeValue, float64(s.Excluded))
	now := st.LastScan
	idleFor := func(since *inventory.Time) float64 {
		if since == nil || now == nil {
			return 0
		}
		return max(now.Sub(since.Time).Seconds(), 0)
	}
	for uuid, g := range st.GPUs {
		idx := strconv.Itoa(g.Index)
		if g.UtilizationPercent != nil {
			ch <- prometheus.MustNewConstMetric(descDeviceUtil, prometheus.GaugeValue, float64(*g.UtilizationPercent)/100, uuid, idx)
		}
		if g.MemoryUsedMB != nil {
			ch <- prometheus.MustNewConstMetric(descDeviceMem, prometheus.GaugeValue, float64(*g.MemoryUsedMB)*1024*1024, uuid, idx)
		}
	}
	type ukey struct{ uuid, kind, id, user string }
	util := map[ukey]*float64{}
	addUtil := func(k ukey, v *int) {
		cur, seen := util[k]
		switch {
		case v == nil:
			util[k] = nil
		case !seen:
			f := float64(*v) / 100
			util[k] = &f
		case cur != nil:
			f := min(*cur+float64(*v)/100, 1)
			util[k] = &f
		}
	}
	for _, ct := range st.Containers {
		for _, p := range ct.GPUProcesses {
			addUtil(ukey{p.GPUUUID, "container", ct.ID, ct.User}, p.SMUtilPercent)
		}
		if len(ct.GPUProcesses) > 0 {
			ch <- prometheus.MustNewConstMetric(descWorkloadIdle, prometheus.GaugeValue, idleFor(ct.GPUIdleSince), "container", ct.ID, ct.User)
		}
	}
	for _, p := range st.HostProcesses {
		addUtil(ukey{p.GPUUUID, "host-process", strconv.Itoa(p.Pid), p.User}, p.SMUtilPercent)
		ch <- prometheus.MustNewConstMetric(descWorkloadIdle, prometheus.GaugeValue, idleFor(p.GPUIdleSince), "host-process", strconv.Itoa(p.Pid), p.User)
	}
	for k, v := range util {
		if v != nil {
			ch <- prometheus.MustNewConstMetric(descWorkloadUtil, prometheus.GaugeValue, *v, k.uuid, k.kind, k.id, k.user)
		}
	}

	// GPU memory series are summed by their labels first: two entries with
	// the same labels (one PID on two MIG devices of a GPU) must not fail
	// the whole scrape.
	type mkey struct{ uuid, kind, id, user string }
	gpuMem := map[mkey]float64{}
	type ckey struct{ origin, status, gpu string }
	counts := map[ckey]int{}
	without := 0
	for _, ct := range st.Containers {
		counts[ckey{ct.Origin, ct.Status, strconv.FormatBool(ct.HasGPU)}]++
		if ct.GPUWithoutAccess {
			without++
		}
		mem := map[string]int64{} // per GPU
		for _, p := range ct.GPUProcesses {
			if p.GPUMemoryMB != nil {
				mem[p.GPUUUID] += *p.GPUMemoryMB
			}
		}
		for uuid, mb := range mem {
			gpuMem[mkey{uuid, "container", ct.ID, ct.User}] += float64(mb) * 1024 * 1024
		}
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(descContainers, prometheus.GaugeValue, float64(n), k.origin, k.status, k.gpu)
	}
	ch <- prometheus.MustNewConstMetric(descWithoutAccess, prometheus.GaugeValue, float64(without))
	perUser := map[string]int{}
	for _, p := range st.HostProcesses {
		perUser[p.User]++
		if p.GPUMemoryMB != nil {
			gpuMem[mkey{p.GPUUUID, "host-process", strconv.Itoa(p.Pid), p.User}] += float64(*p.GPUMemoryMB) * 1024 * 1024
		}
	}
	for _, p := range st.OtherGPUProcesses {
		if p.GPUMemoryMB != nil {
			user := p.User
			if user == "" {
				user = "unknown"
			}
			gpuMem[mkey{p.GPUUUID, "other-runtime", strconv.Itoa(p.Pid), user}] += float64(*p.GPUMemoryMB) * 1024 * 1024
		}
	}
	for k, v := range gpuMem {
		ch <- prometheus.MustNewConstMetric(descGPUMem, prometheus.GaugeValue, v, k.uuid, k.kind, k.id, k.user)
	}
	for u, n := range perUser {
		ch <- prometheus.MustNewConstMetric(descHostProcs, prometheus.GaugeValue, float64(n), u)
	}
}
