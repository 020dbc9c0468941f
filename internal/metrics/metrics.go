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
	descGPUMem = prometheus.NewDesc("ds01_gpu_memory_used_bytes",
		"GPU memory used per GPU and workload: kind container (id: 12-char container ID), host-process or other-runtime (id: PID).", []string{"gpu_uuid", "kind", "id", "user"}, nil)
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
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second,
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "ds01_detector_build_info", Help: "Always 1; the version is a label.",
		ConstLabels: prometheus.Labels{"version": version}})
	info.Set(1)
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.duration, m.events, m.dropped, info, (*inventoryCollector)(m),
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
	for _, d := range []*prometheus.Desc{descLastScan, descSourceUp, descContainers, descHostProcs, descGPUMem, descWithoutAccess, descAPIRequests, descExcluded} {
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
