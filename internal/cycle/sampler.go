package cycle

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/proc"
)

// Sampler lists every GPU's processes on its own clock (--gpu-interval),
// independent of the scans, Docker events and SIGHUP, and keeps the
// samples until the next scan takes them (reconcile integrates GPU time
// over them). A PID it did not list in its last sample is attributed at
// once: its /proc facts, start time included, are read when it is first
// seen, so a process that lives between two scans is still its owner's.
//
// While a process it lists is younger than --gpu-confirm-after, it
// samples ten times as often: a process that ends soon after it appears
// is then accounted to within a tenth of the interval.
//
// When the set of processes changes it calls OnChange (the daemon's
// debounced scan trigger), so a new process is in the state file within
// about a second, and a burst of changes costs one write per debounce
// window.
type Sampler struct {
	gpus         GPUs
	fs           proc.FS
	now          func() time.Time
	confirmAfter time.Duration
	log          *zap.Logger

	// mu is held across one sample: the scans' samples and the clock's
	// never interleave, and NVML sees one caller at a time.
	mu    chanMutex
	boot  time.Time
	last  *facts.Sample // the newest sample a scan took
	batch []facts.Sample
	gap   bool // the last attempt failed: the next sample starts afresh
	known map[int]known
	rep   gpu.Report // the newest sample's devices and processes
	err   error      // the newest attempt's error
}

// known is what the sampler keeps about a PID of its last sample.
type known struct {
	facts *facts.Proc
	first time.Time // first sighting
	// failed: a read of the facts failed for a reason other than the
	// process being gone (proc.ReadFailed: EMFILE, EIO): read again at the
	// next sample instead of keeping the failure for the process's life.
	failed bool
}

// maxBatch bounds the samples kept while no scan takes them (scans stuck
// behind a hung call): ten minutes at 1 s (about 24 MB at 400 processes). Older ones are dropped.
const maxBatch = 600

// chanMutex is a mutex whose Lock can give up when a context ends.
type chanMutex chan struct{}

func (m chanMutex) lock(ctx context.Context) bool {
	select {
	case m <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (m chanMutex) unlock() { <-m }

// NewSampler returns a sampler of gpus that reads /proc through fs.
// confirmAfter is --gpu-confirm-after (its fast sampling follows it).
func NewSampler(gpus GPUs, fs proc.FS, now func() time.Time, confirmAfter time.Duration, log *zap.Logger) *Sampler {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = zap.NewNop()
	}
	if confirmAfter <= 0 {
		confirmAfter = reconcile.DefaultConfirmAfter
	}
	return &Sampler{gpus: gpus, fs: fs, now: now, confirmAfter: confirmAfter, log: log, mu: make(chanMutex, 1), known: map[int]known{}}
}

// Run samples every interval until ctx ends, faster while a listed
// process is unconfirmed; onChange (may be nil) is called after a sample
// whose set of processes differs from the one before.
func (s *Sampler) Run(ctx context.Context, interval time.Duration, timeout time.Duration, onChange func()) {
	fast := max(interval/10, 50*time.Millisecond)
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sctx, cancel := context.WithTimeout(ctx, timeout)
		changed, young, err := s.Sample(sctx)
		cancel()
		if changed && onChange != nil {
			onChange()
		}
		switch {
		case err != nil: // no driver, say: the scans keep trying too
			t.Reset(min(10*interval, 30*time.Second))
		case young:
			t.Reset(fast)
		default:
			t.Reset(interval)
		}
	}
}

// Sample takes one sample now. It reports whether the set of processes
// changed since the last sample, and whether one of them is younger than
// --gpu-confirm-after.
func (s *Sampler) Sample(ctx context.Context) (changed, young bool, err error) {
	if !s.mu.lock(ctx) {
		return false, false, ctx.Err()
	}
	defer s.mu.unlock()
	return s.sample(ctx)
}

func (s *Sampler) sample(ctx context.Context) (changed, young bool, err error) {
	rep, err := s.gpus.Scan(ctx)
	at := s.now()
	s.err = err
	if err != nil {
		// Nothing is known of the time until the next good sample: it is
		// credited to nobody, and processes then are new sightings.
		if !s.gap {
			s.gap = true
		}
		return false, false, err
	}
	if s.boot.IsZero() {
		wall := time.Now()
		if b, err := s.fs.BootTime(wall); err == nil {
			s.boot = b.Add(at.Sub(wall)) // on the sampler's clock
		}
	}
	next := make(map[int]known, len(rep.Processes))
	pfs := make([]*facts.Proc, len(rep.Processes))
	for i, p := range rep.Processes {
		k, ok := next[p.Pid]
		if !ok {
			if k, ok = s.known[p.Pid]; !ok || k.failed {
				pf := readProc(s.fs, p.Pid)
				if pf.StartErr == nil && !s.boot.IsZero() {
					pf.Started = proc.Started(s.boot, pf.StartTime)
				}
				first := at
				if ok {
					first = k.first
				}
				k = known{facts: &pf, first: first, failed: readFailed(pf)}
				changed = true
			}
			next[p.Pid] = k
			if at.Sub(k.first) < s.confirmAfter {
				young = true
			}
		}
		pfs[i] = k.facts
	}
	if len(next) != len(s.known) {
		changed = true // a PID is gone
	}
	s.known = next
	s.rep = rep
	smp := facts.Sample{At: at, Procs: rep.Processes, Facts: pfs, Gap: s.gap, Unattributed: rep.Unattributed}
	if len(rep.Unattributed) > 0 {
		// Does /proc still have it (the same process: NVML's start time
		// agrees)? Then it is its owner's.
		smp.UnattributedFacts = make([]*facts.Proc, len(rep.Unattributed))
		for i, u := range rep.Unattributed {
			pf := readProc(s.fs, u.Pid)
			if pf.CgroupErr != nil || pf.StartErr != nil || s.boot.IsZero() {
				continue
			}
			pf.Started = proc.Started(s.boot, pf.StartTime)
			if d := pf.Started.Sub(time.UnixMicro(int64(u.StartTime))); d < -2*time.Second || d > 2*time.Second {
				continue // another process has the PID now
			}
			smp.UnattributedFacts[i] = &pf
		}
	}
	s.batch = append(s.batch, smp)
	s.gap = false
	if len(s.batch) > maxBatch {
		s.batch = append(s.batch[:0:0], s.batch[len(s.batch)-maxBatch:]...)
		s.batch[0].Gap = true
	}
	return changed, young, nil
}

// take samples now and hands over every sample since the last take, the
// newest one's devices and processes and their /proc facts by PID. With a
// failed sample it returns the error and keeps the batch for the next
// take.
func (s *Sampler) take(ctx context.Context) (samples []facts.Sample, rep gpu.Report, procs map[int]facts.Proc, err error) {
	if !s.mu.lock(ctx) {
		return nil, gpu.Report{}, nil, ctx.Err()
	}
	defer s.mu.unlock()
	if _, _, err := s.sample(ctx); err != nil {
		return nil, gpu.Report{}, nil, err
	}
	if s.last != nil {
		last := *s.last // accounted already: only its time and processes count
		last.Unattributed, last.UnattributedFacts = nil, nil
		samples = append(samples, last)
	}
	samples = append(samples, s.batch...)
	newest := s.batch[len(s.batch)-1]
	s.last = &newest
	s.batch = nil
	procs = make(map[int]facts.Proc, len(s.known))
	for pid, k := range s.known {
		procs[pid] = *k.facts
	}
	return samples, s.rep, procs, nil
}
