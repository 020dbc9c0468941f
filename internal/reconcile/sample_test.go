package reconcile

import (
	"math"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// life is one simulated host GPU process of bob's: it runs from start to
// end (seconds after t0).
type life struct {
	pid        int
	start, end float64
}

// world simulates the daemon's GPU side on a simulated clock: a sampler
// every `every` seconds (a tenth of that while a process it lists is
// younger than confirmAfter), a scan 0.1 s after each sample that saw the
// set of processes change (the debounced trigger) and every 30 s, each
// scan taking its own sample first, as the cycle does.
type world struct {
	t            *testing.T
	every        float64
	confirmAfter time.Duration
	// next returns the processes alive at time x; it may start new ones
	// (a user's script) given the state the last scan wrote.
	alive func(x float64, st inventory.State) []life

	st       inventory.State
	batch    []facts.Sample
	last     *facts.Sample
	facts    map[int]*facts.Proc
	first    map[int]float64
	events   []Transition
	perUser  float64
	appeared map[int]float64 // pid → time it first appeared in the state
}

func (w *world) at(x float64) time.Time { return t0.Add(time.Duration(x * float64(time.Second))) }

// sample lists the processes alive at x; it reports whether the set
// changed and whether one is young.
func (w *world) sample(x float64) (changed, young bool) {
	procs := w.alive(x, w.st)
	s := facts.Sample{At: w.at(x)}
	seen := map[int]bool{}
	for _, p := range procs {
		sm := 80
		s.Procs = append(s.Procs, facts.GPUProcess{Pid: p.pid, GPUUUID: "GPU-0", MIGIndex: -1, MemoryMiB: mib(512), SMUtil: &sm})
		pf, ok := w.facts[p.pid]
		if !ok {
			pf = &facts.Proc{Argv: []string{"python", "burst.py"}, UID: 1001, StartTime: uint64(p.pid), Started: w.at(p.start)}
			w.facts[p.pid] = pf
			w.first[p.pid] = x
			changed = true
		}
		s.Facts = append(s.Facts, pf)
		seen[p.pid] = true
		if x-w.first[p.pid] < w.confirmAfter.Seconds() {
			young = true
		}
	}
	for pid := range w.facts {
		if !seen[pid] {
			delete(w.facts, pid)
			changed = true
		}
	}
	w.batch = append(w.batch, s)
	return changed, young
}

func (w *world) scan(x float64) {
	w.sample(x)
	samples := w.batch
	if w.last != nil {
		samples = append([]facts.Sample{*w.last}, samples...)
	}
	newest := w.batch[len(w.batch)-1]
	w.last, w.batch = &newest, nil
	f := facts.Scan{Now: w.at(x), Samples: samples, Users: map[uint32]string{1001: "bob"}, Procs: map[int]facts.Proc{}}
	f.GPU = newest.Procs
	for i, p := range newest.Procs {
		f.Procs[p.Pid] = *newest.Facts[i]
	}
	res := Reconcile(w.st, f, Rules{ConfirmAfter: w.confirmAfter, Interval: 30 * time.Second})
	w.st = res.State
	w.events = append(w.events, res.Transitions...)
	w.perUser += res.UserGPUSeconds["bob"].Held
	for _, m := range []map[string]inventory.HostProcess{w.st.PendingProcesses, w.st.HostProcesses} {
		for _, p := range m {
			if _, ok := w.appeared[p.Pid]; !ok {
				w.appeared[p.Pid] = x
			}
		}
	}
}

// run simulates until `until`, then 70 s more for the aggregates to
// reach the log.
func (w *world) run(until float64) {
	w.facts, w.first, w.appeared = map[int]*facts.Proc{}, map[int]float64{}, map[int]float64{}
	w.st = inventory.Empty()
	x, nextTick := 0.3, 30.0
	w.scan(0)
	var pendingScan float64 = -1
	for x < until+70 {
		changed, young := w.sample(x)
		if changed && pendingScan < 0 {
			pendingScan = x + 0.1
		}
		step := w.every
		if young {
			step = w.every / 10
		}
		nx := x + step
		for pendingScan >= 0 && pendingScan < nx {
			w.scan(pendingScan)
			pendingScan = -1
		}
		for nextTick < nx {
			w.scan(nextTick)
			nextTick += 30
		}
		x = nx
	}
}

// logged sums the held seconds the event log carries for bob.
func (w *world) logged() (held float64, discovered, lines int) {
	for _, e := range w.events {
		switch d := e.Details.(type) {
		case event.HostProcessExitedDetails:
			held += d.GPUHeldSeconds
		case event.ShortProcessesDetails:
			held += d.GPUHeldSeconds
			lines++
		case event.HostProcessDiscoveredDetails:
			discovered++
		}
	}
	return held, discovered, lines
}

// Back-to-back 4.5 s processes for 40 s, sampled every second: at least
// 70 % of their lifetime is bob's, per user and in the log, and nothing
// more than they lived.
func TestBackToBackShortProcessesAreBilled(t *testing.T) {
	for _, offset := range []float64{0, 0.25, 0.5, 0.75} {
		var lives []life
		for i := 0; float64(i)*4.5 < 40; i++ {
			lives = append(lives, life{pid: 100 + i, start: offset + float64(i)*4.5, end: offset + math.Min(float64(i+1)*4.5, 40)})
		}
		total := 0.0
		for _, l := range lives {
			total += l.end - l.start
		}
		w := &world{t: t, every: 1, confirmAfter: 5 * time.Second, alive: func(x float64, _ inventory.State) []life {
			var out []life
			for _, l := range lives {
				if l.start <= x && x < l.end {
					out = append(out, l)
				}
			}
			return out
		}}
		w.run(40 + offset)
		held, discovered, lines := w.logged()
		t.Logf("offset %.2f: lifetime %.1f s, per-user %.2f s (%.0f %%), log %.2f s, %d aggregate lines", offset, total, w.perUser, 100*w.perUser/total, held, lines)
		if w.perUser < 0.7*total || w.perUser > total+1e-6 {
			t.Errorf("offset %.2f: per-user held %.2f s of %.1f s lived", offset, w.perUser, total)
		}
		if math.Abs(held-w.perUser) > 1e-6 {
			t.Errorf("offset %.2f: the log carries %.2f s, the per-user counter %.2f s", offset, held, w.perUser)
		}
		if discovered != 0 {
			t.Errorf("offset %.2f: %d processes confirmed, none lived --gpu-confirm-after", offset, discovered)
		}
		if lines < 1 || lines > 3 { // 40 s of work at one line per 30 s
			t.Errorf("offset %.2f: %d aggregate lines", offset, lines)
		}
	}
}

// Each process is restarted as soon as it appears in the state (0.2 s
// later): still at least 70 % of the lifetime is billed.
func TestRestartOnSightingIsBilled(t *testing.T) {
	var lives []*life
	pid := 200
	w := &world{t: t, every: 1, confirmAfter: 5 * time.Second}
	w.alive = func(x float64, st inventory.State) []life {
		if x >= 40 {
			if n := len(lives); n > 0 && lives[n-1].end > 40 {
				lives[n-1].end = 40
			}
			return nil
		}
		if n := len(lives); n == 0 || (lives[n-1].end <= x) {
			start := 0.05
			if n > 0 {
				start = lives[n-1].end
			}
			lives = append(lives, &life{pid: pid, start: start, end: math.Inf(1)})
			pid++
		}
		cur := lives[len(lives)-1]
		if at, ok := w.appeared[cur.pid]; ok && math.IsInf(cur.end, 1) {
			cur.end = at + 0.2 // killed as soon as the state shows it
		}
		if cur.start <= x && x < cur.end {
			return []life{*cur}
		}
		return nil
	}
	w.run(40)
	total := 0.0
	for _, l := range lives {
		total += math.Min(l.end, 40) - l.start
	}
	held, _, _ := w.logged()
	t.Logf("%d processes, lifetime %.1f s, per-user %.2f s (%.0f %%), log %.2f s", len(lives), total, w.perUser, 100*w.perUser/total, held)
	if w.perUser < 0.7*total || w.perUser > total+1e-6 || math.Abs(held-w.perUser) > 1e-6 {
		t.Errorf("per-user %.2f s, log %.2f s, of %.1f s lived", w.perUser, held, total)
	}
}

// A 2 s process is billed between 1 and 3 held seconds, wherever the
// samples fall; a 3 s one too (nothing before its start).
func TestShortProcessBilling(t *testing.T) {
	for _, offset := range []float64{0, 0.1, 0.5, 0.9} {
		for _, length := range []float64{2, 3} {
			l := life{pid: 300, start: 10 + offset, end: 10 + offset + length}
			w := &world{t: t, every: 1, confirmAfter: 5 * time.Second, alive: func(x float64, _ inventory.State) []life {
				if l.start <= x && x < l.end {
					return []life{l}
				}
				return nil
			}}
			w.run(20)
			if w.perUser < 1 || w.perUser > 3 || w.perUser > length+1e-9 {
				t.Errorf("a %.0f s process at offset %.1f: billed %.2f s", length, offset, w.perUser)
			}
		}
	}
}

// Confirmation is by time between samples, not by counting scans: two
// scans 357 ms apart (a Docker event's) confirm nothing; the process is
// confirmed once it has been seen for --gpu-confirm-after.
func TestConfirmationByTime(t *testing.T) {
	proc := func(pid int) (facts.GPUProcess, *facts.Proc) {
		return facts.GPUProcess{Pid: pid, GPUUUID: "GPU-0", MIGIndex: -1, MemoryMiB: mib(1)}, &facts.Proc{Argv: []string{"x"}, UID: 1001, StartTime: 7, Started: t0}
	}
	p, pf := proc(50)
	st := inventory.Empty()
	var last *facts.Sample
	scanAt := func(d time.Duration) Result {
		s := facts.Sample{At: t0.Add(d), Procs: []facts.GPUProcess{p}, Facts: []*facts.Proc{pf}}
		samples := []facts.Sample{s}
		if last != nil {
			samples = []facts.Sample{*last, s}
		}
		last = &s
		f := facts.Scan{Now: s.At, Samples: samples, GPU: s.Procs, Procs: map[int]facts.Proc{50: *pf}, Users: map[uint32]string{1001: "bob"}}
		res := Reconcile(st, f, Rules{})
		st = res.State
		return res
	}
	for _, d := range []time.Duration{100 * time.Millisecond, 457 * time.Millisecond, 4 * time.Second, 5099 * time.Millisecond} {
		if res := scanAt(d); len(res.Transitions) != 0 || len(st.HostProcesses) != 0 {
			t.Fatalf("at %v: confirmed %v (transitions %v) before --gpu-confirm-after", d, st.HostProcesses, describe(res.Transitions))
		}
	}
	res := scanAt(5100 * time.Millisecond)
	if got := describe(res.Transitions); len(got) != 1 || got[0] != "host_gpu_process_discovered 50" {
		t.Fatalf("at 5.1 s: %v", got)
	}
	if hp := st.HostProcesses["50"]; hp.DetectedAt == nil || !hp.DetectedAt.Equal(t0.Add(100*time.Millisecond)) ||
		math.Abs(hp.GPUHeldSeconds-5.0) > 1e-9 {
		// 5.0: from the first sample to the last (the sampler's very first
		// sample has no interval before it).
		t.Errorf("confirmed: detected_at %v (want the first sighting), held %v (want 5.0)", hp.DetectedAt, hp.GPUHeldSeconds)
	}
}
