// Package cycle runs one scan as three steps:
//
//  1. gather: ask the Docker and GPU sources what exists, and read the /proc
//     facts and user names those answers need (gather.go);
//  2. reconcile: a pure function turns the facts and the last reported
//     state into the new state and its transitions (internal/reconcile);
//  3. deliver: write the state carrying the new event lines, then append
//     them (internal/deliver).
//
// Between the steps it keeps the health bookkeeping: a source that starts
// failing or recovers gets one journal line, not one per cycle.
package cycle

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/deliver"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/policy"
	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/internal/source/activity"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Containers is the Docker source as the cycle sees it. With full false
// it may report only what changed since the last call (the containers
// Docker's events named) on top of what it knew.
type Containers interface {
	List(ctx context.Context, full bool) (facts.Snapshot, error)
}

// GPUs is the GPU source as the cycle sees it.
type GPUs interface {
	Scan(ctx context.Context) (gpu.Report, error)
}

// Config is the cycle's wiring.
type Config struct {
	// Files are the state file and the event log (deliver.Config: their
	// paths, the state file's group, the sealing key).
	Files  deliver.Config
	DryRun bool // write nothing; Scan returns the state for printing
	// Rules are reconcile's, as they are; SetPolicy replaces their Policy.
	// The sampler confirms host GPU processes after their ConfirmAfter.
	Rules  reconcile.Rules
	Docker Containers
	GPU    GPUs // nil: no GPU source
	Proc   proc.FS
	// Users resolves UIDs to names (NSS) within the scan's deadline; nil
	// leaves UIDs as numbers.
	Users func(ctx context.Context, uid uint32) (string, bool)
	// Activity reads the running containers' cgroups and network
	// namespaces at each reconciliation scan; nil: not read.
	Activity *activity.Reader
	Now      func() time.Time
}

// Scanner carries the reported state from one scan to the next.
type Scanner struct {
	cfg      Config
	log      *zap.Logger
	rules    reconcile.Rules
	sink     *deliver.Sink // nil with DryRun
	reported inventory.State
	sampler  *Sampler             // nil without a GPU source
	inits    map[string]initProc  // container ID → init process and UID
	running  []activity.Container // running at the last reconciliation scan
	failing  map[string]string    // source → its last error, while failing
}

// New loads the last state and, unless DryRun, takes over the two files:
// lines the last run recorded but did not append are queued. The journal
// lines go to log (nil: nowhere).
func New(cfg Config, log *zap.Logger) *Scanner {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Scanner{cfg: cfg, log: log, rules: cfg.Rules, failing: map[string]string{}}
	if cfg.GPU != nil {
		s.sampler = NewSampler(cfg.GPU, cfg.Proc, cfg.Now, cfg.Rules.ConfirmAfter, log)
	}
	if cfg.DryRun {
		s.reported = deliver.Load(cfg.Files.StatePath, log)
	} else {
		s.sink, s.reported = deliver.Open(cfg.Files, log)
	}
	return s
}

// SetPolicy replaces the idle verdict's rule from the next scan on. Call
// it between scans (the loop's goroutine).
func (s *Scanner) SetPolicy(p *policy.Policy) { s.rules.Policy = p }

// Sampler is the GPU sampler the scans take their samples from (nil
// without a GPU source); the daemon runs it on its own clock.
func (s *Scanner) Sampler() *Sampler { return s.sampler }

// Reported returns the last reported state (read-only use).
func (s *Scanner) Reported() inventory.State { return s.reported }

// Scan runs one cycle. It never fails as a whole: a failing source is
// recorded in the state's sources and its last known workloads are kept; a
// failed write is reported in the summary and retried next cycle.
//
// full is false for a scan a Docker event triggered: the Docker source
// then inspects only the containers the events named, with no list call.
func (s *Scanner) Scan(ctx context.Context, full bool) summary.Summary {
	start := time.Now()
	facts, dockerTook := s.gather(ctx, full)
	gathered := time.Now()
	res := reconcile.Reconcile(s.reported, facts, s.rules)
	reconciled := time.Now()
	s.noteHealth("docker", facts.DockerErr)
	s.noteHealth("gpu", facts.GPUErr)
	s.noteHealth("proc", facts.ProcErr)
	for _, w := range res.Warnings {
		msg, fields := warningLine(w)
		s.log.Warn(msg, fields...)
	}
	s.reported = res.State

	sum := summarize(res)
	delivering := time.Now()
	if !s.cfg.DryRun {
		out := s.sink.Deliver(res.State, s.encode(res.Transitions, res.State, facts.Now))
		sum.PendingEvents, sum.DroppedEvents, sum.StateWriteErr, sum.EventAppendErr = out.Pending, out.Dropped, out.StateErr, out.AppendErr
	}
	end := time.Now()
	sum.Duration = end.Sub(start)
	sum.Phases = summary.Phases{Gather: gathered.Sub(start), Docker: dockerTook, Reconcile: reconciled.Sub(gathered), Deliver: end.Sub(delivering)}
	return sum
}

// encode turns transitions into event lines, logging each one: the
// journal gets one line per transition.
func (s *Scanner) encode(ts []reconcile.Transition, st inventory.State, now time.Time) [][]byte {
	lines := make([][]byte, 0, len(ts))
	for _, t := range ts {
		at := now
		if !t.At.IsZero() && t.At.Before(now) {
			at = t.At
		}
		line, res, err := event.Encode(event.Envelope{
			Timestamp: inventory.NewTime(at), EventType: t.EventType, User: t.User, Source: event.Source,
		}, t.Details)
		if err != nil { // cannot happen with our own types; say so loudly
			s.log.Error("event not encodable", zap.String("event_type", t.EventType), zap.Error(err))
			continue
		}
		if res.Truncated {
			s.log.Warn("event too large; details truncated", zap.String("event_type", t.EventType), zap.Int("original_size", res.OriginalSize))
		}
		msg, fields := transitionLine(t, st)
		s.log.Info(msg, append(fields, zap.String("event_type", t.EventType))...)
		lines = append(lines, line)
	}
	return lines
}

// noteHealth warns once when a source starts failing and logs once when it
// recovers; while it keeps failing, a changed error is logged at debug
// level only.
func (s *Scanner) noteHealth(name string, err error) {
	last, failing := s.failing[name]
	switch {
	case err != nil && !failing:
		s.log.Warn(name+" source failed; keeping last known state", zap.String("source", name), zap.Error(err))
	case err != nil && last != err.Error():
		s.log.Debug(name+" source still failing", zap.String("source", name), zap.Error(err))
	case err == nil && failing:
		s.log.Info(name+" source recovered", zap.String("source", name))
		delete(s.failing, name)
	}
	if err != nil {
		s.failing[name] = err.Error()
	}
}

func summarize(res reconcile.Result) summary.Summary {
	st := res.State
	sum := summary.Summary{
		Containers: len(st.Containers), HostProcesses: len(st.HostProcesses),
		DockerOK: st.Sources.Docker.OK, DockerError: st.Sources.Docker.Error,
		GPUOK: st.Sources.GPU.OK, GPUError: st.Sources.GPU.Error,
		State: st, Events: len(res.Transitions), EventCounts: map[string]int{}, Excluded: res.Excluded,
		UserGPUSeconds: map[string]summary.GPUSeconds{},
	}
	for u, d := range res.UserGPUSeconds {
		sum.UserGPUSeconds[u] = summary.GPUSeconds{Held: d.Held, Busy: d.Busy}
	}
	for _, t := range res.Transitions {
		sum.EventCounts[t.EventType]++
	}
	for _, c := range st.Containers {
		if c.HasGPU {
			sum.GPUContainers++
		}
	}
	return sum
}
