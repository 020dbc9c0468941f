// Package metrics exposes the detector and the workloads to Prometheus, on
// a registry of its own. Workload series are rebuilt from each cycle's
// inventory as a whole, so a scrape never mixes two cycles and the series of
// a workload that is gone disappear with it.
//
// The metric and label names are stable: dashboards and alert rules depend
// on them (docs/METRICS.md, docs/alerts.yml, docs/grafana). GPU series carry
// dcgm-exporter's labels, gpu (the index) and UUID, so they join DCGM_*
// series as they are.
package metrics

import (
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"

	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Metrics holds the registry and the latest cycle.
type Metrics struct {
	Registry *prometheus.Registry
	version  string

	duration prometheus.Histogram
	events   *prometheus.CounterVec
	dropped  prometheus.Counter
	held     *prometheus.CounterVec
	busy     *prometheus.CounterVec

	// UserSeriesTTL is how long a user's counter series stay after the
	// user's last workload (default 24 h): user names come from labels
	// too, so their number would grow without bound. report keeps their
	// history; a user who comes back starts the counters again, which
	// Prometheus' rate() reads as a counter reset.
	UserSeriesTTL time.Duration
	userSeen      map[string]time.Time // label value → last cycle with a workload

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
	workloadLabels    = []string{"type", "id", "user"}
	workloadGPULabels = []string{"gpu", "UUID", "type", "id", "user"}
	gpuLabels         = []string{"gpu", "UUID"}

	descLastScan = prometheus.NewDesc("ds01_detector_last_scan_timestamp_seconds",
		"Unix time of the last completed scan (the state file's last_scan).", nil, nil)
	descSourceUp = prometheus.NewDesc("ds01_detector_source_up",
		"1 when the source (docker, gpu, proc) answered in the last scan, 0 when it failed.", []string{"source"}, nil)
	descContainers = prometheus.NewDesc("ds01_containers",
		"Containers by origin, Docker status and GPU access.", []string{"origin", "status", "has_gpu"}, nil)
	descHostProcs = prometheus.NewDesc("ds01_host_gpu_processes",
		"Confirmed host GPU processes (outside containers) per user.", []string{"user"}, nil)
	descWorkloadInfo = prometheus.NewDesc("ds01_workload_info",
		"Always 1: names a workload. type container (id: 12-char container ID; name, image and origin from Docker), host-process or other-runtime (id: PID; name: the process name; origin: the runtime for other-runtime).",
		[]string{"type", "id", "name", "image", "user", "origin"}, nil)
	descAllocated = prometheus.NewDesc("ds01_workload_gpus_allocated",
		"GPUs a running container's configuration grants (--gpus all and the like: every GPU of the host); running containers with GPU access only.",
		workloadLabels, nil)
	descGPUMem = prometheus.NewDesc("ds01_workload_gpu_memory_used_bytes",
		"GPU memory used per GPU and workload (type container, host-process or other-runtime).", workloadGPULabels, nil)
	descWorkloadUtil = prometheus.NewDesc("ds01_workload_gpu_utilization_ratio",
		"SM utilisation (0-1) of a workload's processes on one GPU, summed and capped at 1, from NVML's per-process samples since the last scan. Absent when unknown (MIG, NOT_SUPPORTED).", workloadGPULabels, nil)
	descWorkloadIdle = prometheus.NewDesc("ds01_workload_gpu_idle_seconds",
		"How long a workload holding GPU memory has been below --gpu-idle-threshold on every GPU it holds; 0 when active.", workloadLabels, nil)
	descWorkloadIdleVerdict = prometheus.NewDesc("ds01_workload_gpu_idle",
		"1 when the daemon judges a workload holding GPU memory idle: below --gpu-idle-threshold on every GPU it holds for at least --gpu-idle-after (the state file's gpu_idle, detection.gpu_idle); else 0.", workloadLabels, nil)
	descCPUSeconds = prometheus.NewDesc("ds01_workload_cpu_usage_seconds_total",
		"CPU time a running container's cgroup has used (its cpu_usage_seconds), read at each reconciliation scan; absent when unknown.", workloadLabels, nil)
	descMemory = prometheus.NewDesc("ds01_workload_memory_bytes",
		"Working-set memory of a running container (usage less inactive file pages, as docker stats shows it); absent when unknown.", workloadLabels, nil)
	descNetwork = prometheus.NewDesc("ds01_workload_network_bytes_total",
		"Bytes a running container's network namespace received (direction rx) and sent (tx) on every interface but lo; absent in the host's namespace.",
		append(append([]string{}, workloadLabels...), "direction"), nil)
	descIdle = prometheus.NewDesc("ds01_workload_idle_seconds",
		"How long a running container has been idle by the site's rule (GPU when held, CPU and network under the policy's thresholds for idle_detection_window scans past the grace period); 0 when not idle. group is the policy group that applied.",
		append(append([]string{}, workloadLabels...), "group"), nil)
	descUnattributed = prometheus.NewDesc("ds01_gpu_unattributed_seconds_total",
		"Active time of processes only NVML accounting mode saw (they started and ended between two samples) and /proc no longer had: nobody's. Cumulative, from the state.", gpuLabels, nil)
	descDeviceUtil = prometheus.NewDesc("ds01_gpu_utilization_ratio",
		"Whole-device utilisation (0-1) from nvmlDeviceGetUtilizationRates.", gpuLabels, nil)
	descDeviceMem = prometheus.NewDesc("ds01_gpu_memory_used_bytes",
		"GPU memory used on the device, all processes together (nvmlDeviceGetMemoryInfo).", gpuLabels, nil)
	descWithoutAccess = prometheus.NewDesc("ds01_workloads_gpu_without_access",
		"Containers using a GPU their configuration does not grant.", nil, nil)
	descExcluded = prometheus.NewDesc("ds01_detector_excluded_gpu_processes",
		"GPU processes of system accounts (UID < 1000) left out of host processes by name in the last scan.", nil, nil)
	descAPIRequests = prometheus.NewDesc("ds01_detector_docker_api_requests_total",
		"Docker API requests made, by endpoint (a steady cycle makes one GET /containers/json).", []string{"endpoint"}, nil)
)

// New builds the registry, with the Go runtime and process collectors and
// ds01_detector_build_info. version is the daemon's version; the build's
// revision, branch and Go version come from prometheus/common/version
// (set by the Makefile's -ldflags).
func New(version string) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		version:  version,
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
		userSeen:          map[string]time.Time{},
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 5 * time.Second,
	}
	var opts []versioncollector.Option
	if version != "" {
		opts = append(opts, versioncollector.WithExtraConstLabels(prometheus.Labels{"version": version}))
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		versioncollector.NewCollector("ds01_detector", opts...),
		m.duration, m.events, m.dropped, m.held, m.busy, (*inventoryCollector)(m),
	)
	return m
}

// Observe records a finished cycle. Call it once per cycle.
func (m *Metrics) Observe(s summary.Summary) {
	m.duration.Observe(s.Duration.Seconds())
	for t, n := range s.EventCounts {
		m.events.WithLabelValues(lv(t)).Add(float64(n))
	}
	m.dropped.Add(float64(s.DroppedEvents))
	now := time.Now()
	if s.State.LastScan != nil {
		now = s.State.LastScan.Time
	}
	for u, d := range s.UserGPUSeconds {
		m.held.WithLabelValues(lv(u)).Add(d.Held)
		m.busy.WithLabelValues(lv(u)).Add(d.Busy)
		m.userSeen[lv(u)] = now
	}
	m.forgetUsers(s.State, now)
	m.mu.Lock()
	m.last = &s
	m.mu.Unlock()
}

// forgetUsers drops the counter series of users with no workload in the
// state for UserSeriesTTL.
func (m *Metrics) forgetUsers(st inventory.State, now time.Time) {
	ttl := m.UserSeriesTTL
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	for _, c := range st.Containers {
		if _, ok := m.userSeen[lv(c.User)]; ok {
			m.userSeen[lv(c.User)] = now
		}
	}
	for _, p := range st.HostProcesses {
		if _, ok := m.userSeen[lv(p.User)]; ok {
			m.userSeen[lv(p.User)] = now
		}
	}
	for u, seen := range m.userSeen {
		if now.Sub(seen) >= ttl {
			m.held.DeleteLabelValues(u)
			m.busy.DeleteLabelValues(u)
			delete(m.userSeen, u)
		}
	}
}

// inventoryCollector renders the last cycle's inventory at scrape time.
type inventoryCollector Metrics

func (c *inventoryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLastScan, descSourceUp, descContainers, descHostProcs, descWorkloadInfo, descAllocated,
		descGPUMem, descWithoutAccess, descAPIRequests, descExcluded, descWorkloadUtil, descWorkloadIdle, descWorkloadIdleVerdict, descDeviceUtil, descDeviceMem, descUnattributed,
		descCPUSeconds, descMemory, descNetwork, descIdle} {
		ch <- d
	}
}

func up(h inventory.SourceHealth) float64 {
	if h.OK {
		return 1
	}
	return 0
}

// lv makes a label value of a string the daemon did not choose (a Docker
// name, a user from a label or a path, a command line): client_golang
// refuses invalid UTF-8, and one bad byte must not fail the scrape.
func lv(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// processName is the name of a recorded command line's program: the base
// name of its first word ("python" for "/usr/bin/python train.py").
func processName(cmdline string) string {
	f := strings.Fields(cmdline)
	if len(f) == 0 {
		return ""
	}
	return path.Base(f[0])
}

// gpuKey identifies a workload's series on one GPU.
type gpuKey struct{ uuid, kind, id, user string }

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
	ch <- prometheus.MustNewConstMetric(descSourceUp, prometheus.GaugeValue, up(st.Sources.Proc), "proc")

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
			ch <- prometheus.MustNewConstMetric(descDeviceUtil, prometheus.GaugeValue, float64(*g.UtilizationPercent)/100, idx, lv(uuid))
		}
		if g.MemoryUsedMB != nil {
			ch <- prometheus.MustNewConstMetric(descDeviceMem, prometheus.GaugeValue, float64(*g.MemoryUsedMB)*1024*1024, idx, lv(uuid))
		}
		ch <- prometheus.MustNewConstMetric(descUnattributed, prometheus.CounterValue, g.UnattributedSeconds, idx, lv(uuid))
	}
	// A workload's GPU index is the GPU's in the gpus map; the process's
	// own gpu_index stands in when the map lacks the GPU (GPU source down
	// since the start, a state from the Python scanner).
	gpuIndex := map[string]string{} // by UUID
	seeIndex := func(uuid string, own int) string {
		uuid = lv(uuid)
		if _, ok := gpuIndex[uuid]; !ok {
			gpuIndex[uuid] = strconv.Itoa(own)
		}
		return uuid
	}
	for uuid, g := range st.GPUs {
		gpuIndex[lv(uuid)] = strconv.Itoa(g.Index)
	}
	emitGPU := func(d *prometheus.Desc, k gpuKey, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, gpuIndex[k.uuid], k.uuid, k.kind, k.id, k.user)
	}

	// Per-workload utilisation and memory are summed by their labels
	// first: two entries with the same labels (one PID on two MIG devices
	// of a GPU) must not fail the whole scrape.
	util := map[gpuKey]*int{}
	gpuMem := map[gpuKey]float64{}
	type ckey struct{ origin, status, gpu string }
	counts := map[ckey]int{}
	without := 0

	for _, ct := range st.Containers {
		user, id := ct.User, ct.ID
		ch <- prometheus.MustNewConstMetric(descWorkloadInfo, prometheus.GaugeValue, 1,
			workload.KindContainer, lv(id), lv(ct.Name), lv(ct.Image), lv(user), lv(ct.Origin))
		if ct.Status == "running" && ct.HasGPU {
			ch <- prometheus.MustNewConstMetric(descAllocated, prometheus.GaugeValue, float64(ct.GrantedGPUs(st.GPUs)), workload.KindContainer, lv(id), lv(user))
		}
		counts[ckey{lv(ct.Origin), lv(ct.Status), strconv.FormatBool(ct.HasGPU)}]++
		if ct.GPUWithoutAccess {
			without++
		}
		for _, p := range ct.GPUProcesses {
			k := gpuKey{seeIndex(p.GPUUUID, p.GPUIndex), workload.KindContainer, lv(id), lv(user)}
			workload.AddUtil(util, k, p.SMUtilPercent)
			if p.GPUMemoryMB != nil {
				gpuMem[k] += float64(*p.GPUMemoryMB) * 1024 * 1024
			}
		}
		if len(ct.GPUProcesses) > 0 {
			ch <- prometheus.MustNewConstMetric(descWorkloadIdle, prometheus.GaugeValue, idleFor(ct.GPUIdleSince), workload.KindContainer, lv(id), lv(user))
			ch <- prometheus.MustNewConstMetric(descWorkloadIdleVerdict, prometheus.GaugeValue, b2f(ct.GPUIdle), workload.KindContainer, lv(id), lv(user))
		}
		if ct.Status == "running" {
			c.activity(ch, ct, idleFor)
		}
	}
	perUser := map[string]int{}
	for _, p := range st.HostProcesses {
		id := strconv.Itoa(p.Pid)
		perUser[lv(p.User)]++
		ch <- prometheus.MustNewConstMetric(descWorkloadInfo, prometheus.GaugeValue, 1,
			workload.KindHostProcess, id, lv(processName(p.Cmdline)), "", lv(p.User), "")
		ch <- prometheus.MustNewConstMetric(descWorkloadIdle, prometheus.GaugeValue, idleFor(p.GPUIdleSince), workload.KindHostProcess, id, lv(p.User))
		ch <- prometheus.MustNewConstMetric(descWorkloadIdleVerdict, prometheus.GaugeValue, b2f(p.GPUIdle), workload.KindHostProcess, id, lv(p.User))
		k := gpuKey{seeIndex(p.GPUUUID, p.GPUIndex), workload.KindHostProcess, id, lv(p.User)}
		workload.AddUtil(util, k, p.SMUtilPercent)
		if p.GPUMemoryMB != nil {
			gpuMem[k] += float64(*p.GPUMemoryMB) * 1024 * 1024
		}
	}
	others := map[string]bool{} // one info series per PID
	for _, p := range st.OtherGPUProcesses {
		id, user := strconv.Itoa(p.Pid), p.User
		if user == "" {
			user = inventory.UnknownUser
		}
		if !others[id] {
			others[id] = true
			ch <- prometheus.MustNewConstMetric(descWorkloadInfo, prometheus.GaugeValue, 1,
				workload.KindOtherRuntime, id, lv(processName(p.Cmdline)), "", lv(user), lv(p.Runtime))
		}
		k := gpuKey{seeIndex(p.GPUUUID, p.GPUIndex), workload.KindOtherRuntime, id, lv(user)}
		if p.GPUMemoryMB != nil {
			gpuMem[k] += float64(*p.GPUMemoryMB) * 1024 * 1024
		}
	}
	for k, v := range util {
		if v != nil {
			emitGPU(descWorkloadUtil, k, float64(*v)/100)
		}
	}
	for k, v := range gpuMem {
		emitGPU(descGPUMem, k, v)
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(descContainers, prometheus.GaugeValue, float64(n), k.origin, k.status, k.gpu)
	}
	ch <- prometheus.MustNewConstMetric(descWithoutAccess, prometheus.GaugeValue, float64(without))
	for u, n := range perUser {
		ch <- prometheus.MustNewConstMetric(descHostProcs, prometheus.GaugeValue, float64(n), u)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// activity emits a running container's cgroup and network series and its
// idle verdict.
func (c *inventoryCollector) activity(ch chan<- prometheus.Metric, ct inventory.Container, idleFor func(*inventory.Time) float64) {
	id, user := lv(ct.ID), lv(ct.User)
	if ct.CPUUsageSeconds != nil {
		ch <- prometheus.MustNewConstMetric(descCPUSeconds, prometheus.CounterValue, *ct.CPUUsageSeconds, workload.KindContainer, id, user)
	}
	if ct.MemoryBytes != nil {
		ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(*ct.MemoryBytes), workload.KindContainer, id, user)
	}
	if ct.NetRxBytes != nil && ct.NetTxBytes != nil {
		ch <- prometheus.MustNewConstMetric(descNetwork, prometheus.CounterValue, float64(*ct.NetRxBytes), workload.KindContainer, id, user, "rx")
		ch <- prometheus.MustNewConstMetric(descNetwork, prometheus.CounterValue, float64(*ct.NetTxBytes), workload.KindContainer, id, user, "tx")
	}
	if ct.IdlePolicy != nil {
		ch <- prometheus.MustNewConstMetric(descIdle, prometheus.GaugeValue, idleFor(ct.IdleSince), workload.KindContainer, id, user, lv(ct.IdlePolicy.Group))
	}
}
