// Package gputime accounts GPU time: it integrates the GPU sampler's
// samples into the seconds each workload held and kept busy a GPU, keeps
// the GPU counters and the held-idle verdict, confirms host processes
// and sums up the short ones by user.
package gputime

import (
	"slices"
	"strconv"
	"time"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/reconcile/attribution"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// GPU time from samples. The GPU sampler (internal/cycle) lists every
// GPU's processes on its own clock (--gpu-interval), much faster than the
// scans; a scan hands reconcile the samples taken since the last one. Held
// and busy seconds are Integrated over those samples:
//
//   - the interval between two consecutive samples is credited to a
//     process seen in both (its busy share by the later sample's SM
//     utilisation, which NVML measured over that interval);
//   - the interval ending at a process's first sighting is credited only
//     from the process's own start (/proc start time), never time before
//     it existed; without a start time, nothing;
//   - nothing after its last sighting;
//   - an interval longer than Rules.MaxGap (the sampler stalled or failed)
//     is credited to nobody.
//
// Per workload and GPU, the longest credited span of its processes on that
// GPU counts once: two processes of a container on one GPU hold one GPU.

// credit is a workload's GPU-seconds from the samples.
type credit struct{ held, busy float64 }

// sighting is one host process (PID and start time) seen in the samples.
type sighting struct {
	hp          inventory.HostProcess // as first attributed
	first, last time.Time
	gpus        []string
	credit
	// charged: its credit went into a workload's counters already.
	charged bool
	// ended: it exited and its exit event carries its credit.
	ended bool
}

// hostKey names a host process in the samples: PID and start time.
func hostKey(pid int, start uint64) string {
	return strconv.Itoa(pid) + "@" + strconv.FormatUint(start, 10)
}

// Integrated is what the samples gave: credits by container key and by host
// process (hostKey), and the host processes seen.
type Integrated struct {
	containers map[string]credit
	hosts      map[string]*sighting
	// last is the time of the newest sample; zero without samples.
	last time.Time
}

// Integrate credits the samples' intervals to the workloads listed in them.
// containers are this cycle's (attribution as of now: a process is
// credited to the container it runs in).
//
// With legacy set, samples are LegacySamples: the first stands for the
// last scan and gives credit, not sightings.
func Integrate(samples []facts.Sample, legacy bool, f facts.Scan, containers map[string]inventory.Container, rules Rules) Integrated {
	out := Integrated{containers: map[string]credit{}, hosts: map[string]*sighting{}}
	if len(samples) == 0 {
		return out
	}
	out.last = samples[len(samples)-1].At
	type slot struct {
		key, gpu string
	}
	type proc struct {
		pid   int
		start uint64
		gpu   string
	}
	maxGap := rules.maxGap().Seconds()
	threshold := rules.threshold()
	var before map[proc]bool
	for j, s := range samples {
		seen := make(map[proc]bool, len(s.Procs))
		span := map[slot]float64{}
		sm := map[slot]int{}
		dt := 0.0
		if j > 0 {
			dt = s.At.Sub(samples[j-1].At).Seconds()
			if dt <= 0 || dt > maxGap || s.Gap {
				dt = 0
			}
		}
		for i, p := range s.Procs {
			var pf facts.Proc
			ok := i < len(s.Facts) && s.Facts[i] != nil
			if ok {
				pf = *s.Facts[i]
			}
			id := proc{p.Pid, pf.StartTime, p.GPUUUID}
			seen[id] = true
			pl := attribution.Place(p, pf, ok, f, containers, rules.Attribution)
			key := ""
			switch {
			case pl.Container != "":
				key = "c:" + pl.Container
			case pl.Host != nil:
				hk := hostKey(p.Pid, pf.StartTime)
				key = "h:" + hk
				if legacy && j == 0 {
					break
				}
				h := out.hosts[hk]
				if h == nil {
					h = &sighting{hp: *pl.Host, first: s.At}
					out.hosts[hk] = h
				}
				h.last = s.At
				if !slices.Contains(h.gpus, p.GPUUUID) {
					h.gpus = append(h.gpus, p.GPUUUID)
				}
			default:
				continue // another runtime's, a system process, or gone
			}
			if dt == 0 {
				continue
			}
			d := dt
			if !before[id] { // first sighting: only since the process began
				d = 0
				if !pf.Started.IsZero() {
					d = min(max(s.At.Sub(pf.Started).Seconds(), 0), dt)
				}
			}
			k := slot{key, p.GPUUUID}
			span[k] = max(span[k], d)
			if p.SMUtil != nil {
				sm[k] += *p.SMUtil
			}
		}
		for k, d := range span {
			if d <= 0 {
				continue
			}
			busy := 0.0
			if sm[k] >= threshold {
				busy = d
			}
			if hk, ok := cutPrefix(k.key, "h:"); ok {
				h := out.hosts[hk]
				h.held += d
				h.busy += busy
				continue
			}
			c := out.containers[k.key[2:]]
			c.held += d
			c.busy += busy
			out.containers[k.key[2:]] = c
		}
		before = seen
	}
	return out
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return s, false
}

// LegacySamples stands in for a sampler when the facts carry none (a
// caller that lists GPUs only at scans): the scan's list, taken as seen at
// the last scan too. Every process listed is then credited the interval
// since the last scan, as before the sampler existed.
func LegacySamples(prev inventory.State, f facts.Scan) []facts.Sample {
	if f.GPUErr != nil {
		return nil
	}
	pfs := make([]*facts.Proc, len(f.GPU))
	for i, p := range f.GPU {
		if pf, ok := f.Procs[p.Pid]; ok {
			pf.Started = time.Time{}
			pfs[i] = &pf
		}
	}
	cur := facts.Sample{At: f.Now, Procs: f.GPU, Facts: pfs}
	if prev.LastScan == nil {
		return []facts.Sample{cur}
	}
	return []facts.Sample{{At: prev.LastScan.Time, Procs: f.GPU, Facts: pfs}, cur}
}

// AccountingOnly splits the processes only accounting mode saw: the active
// seconds of those /proc no longer has go to their GPU's
// unattributed_seconds (by UUID); those it still has are their owners',
// returned as ended short processes.
func AccountingOnly(samples []facts.Sample, f facts.Scan, rules Rules) (map[string]float64, []inventory.HostProcess) {
	var byGPU map[string]float64
	var owned []inventory.HostProcess
	for _, s := range samples {
		for i, u := range s.Unattributed {
			var pf *facts.Proc
			if i < len(s.UnattributedFacts) {
				pf = s.UnattributedFacts[i]
			}
			if pf != nil {
				pl := attribution.Place(facts.GPUProcess{Pid: u.Pid, GPUIndex: u.GPUIndex, GPUUUID: u.GPUUUID, MIGIndex: -1}, *pf, true, f, nil, rules.Attribution)
				if pl.Host != nil {
					p := *pl.Host
					p.FirstSeen = inventory.TimePtr(s.At)
					p.GPUAllocatedSeconds, p.GPUHeldSeconds = u.ActiveSeconds, u.ActiveSeconds
					owned = append(owned, p)
					continue
				}
			}
			if byGPU == nil {
				byGPU = map[string]float64{}
			}
			byGPU[u.GPUUUID] += u.ActiveSeconds
		}
	}
	return byGPU, owned
}
