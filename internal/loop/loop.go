// Package loop is the long-running loop: a scan at start, then one per
// interval, never two at once, a rescan when asked (SIGHUP), sd_notify
// readiness, status and watchdog pings, and a clean stop when its context
// ends (SIGTERM or SIGINT: main's signal.NotifyContext).
package loop

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/summary"
)

// Scanner runs one cycle. full is false for a scan a Docker event
// triggered: the scanner may then look only at what the events named. The
// first scan, the interval's reconciliation scans and SIGHUP are full.
type Scanner interface {
	Scan(ctx context.Context, full bool) summary.Summary
}

// Options tune the loop.
type Options struct {
	Interval    time.Duration
	ScanTimeout time.Duration
	// Trigger, when set, asks for a scan soon (Docker events). Sends must not
	// block: use a channel with a buffer of one and a non-blocking send.
	Trigger <-chan struct{}
	// Rescan, when set, asks for a full scan (main feeds it from SIGHUP),
	// with the same rule for sends: requests during a scan coalesce.
	Rescan <-chan struct{}
	// OnCycle, when set, sees every finished cycle.
	OnCycle func(summary.Summary)
	// OnRescan, when set, runs on a Rescan request before the scan (the
	// daemon reloads its policy file there).
	OnRescan func()
	// StuckGrace is how long past its deadline a scan may run before the
	// watchdog pings stop (default 1s).
	StuckGrace time.Duration
}

// Run loops until ctx ends, and returns nil then. A scan under way when
// it ends has its API calls cut short, and is let finish its write.
func Run(ctx context.Context, sc Scanner, log *zap.Logger, opt Options) error {
	// Every duration of the loop is time.Since(began): Go's monotonic
	// reading, which a wall-clock step, backward or forward, never changes.
	// (TestOnlyMonotonicClockReadings keeps wall-clock readings out of
	// this file.)
	began := time.Now()
	elapsed := func() time.Duration { return time.Since(began) }
	// scanStart is the start of the running scan on the elapsed clock,
	// idle when negative.
	var scanStart atomic.Int64
	scanStart.Store(idle)
	wdCtx, stopWD := context.WithCancel(ctx)
	defer stopWD()
	if opt.StuckGrace == 0 {
		opt.StuckGrace = time.Second
	}
	go watchdog(wdCtx, &scanStart, elapsed, opt.ScanTimeout+opt.StuckGrace, log)

	ticker := time.NewTicker(opt.Interval)
	defer ticker.Stop()
	ticks := ticker.C
	ready := false
	full := true
	for {
		scanCtx, cancel := context.WithTimeout(ctx, opt.ScanTimeout)
		done := make(chan summary.Summary, 1)
		scanStart.Store(int64(elapsed()))
		go func(full bool) { done <- sc.Scan(scanCtx, full) }(full)

		var sum summary.Summary
		stopping := false
		select {
		case sum = <-done:
		case <-ctx.Done():
			// Abort the scan's API calls; the write it may be in finishes.
			log.Info("stopping after the current cycle", why(ctx))
			stopping = true
			cancel()
			sum = <-done
		}
		cancel()
		scanStart.Store(idle)
		report(log, sum, scanCtx.Err())
		if opt.OnCycle != nil {
			opt.OnCycle(sum)
		}
		status := "STATUS=" + sum.StatusLine()
		if !ready {
			status = daemon.SdNotifyReady + "\n" + status
			ready = true
		}
		daemon.SdNotify(false, status)
		if stopping {
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			return nil
		}

		// Ticks that fell during the scan are dropped, not queued.
		select {
		case <-ticks:
		default:
		}
		full = true
		select {
		case <-ticks:
		case <-opt.Rescan:
			log.Info("rescan requested (SIGHUP)")
			if opt.OnRescan != nil {
				opt.OnRescan()
			}
		case <-opt.Trigger:
			full = false
		case <-ctx.Done():
			log.Info("stopping", why(ctx))
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			return nil
		}
	}
}

// why is the journal's field for the end of ctx: the signal that ended it
// (signal.NotifyContext's cause, "terminated signal received"), or the
// cause as it is.
func why(ctx context.Context) zap.Field {
	cause := context.Cause(ctx).Error()
	if sig, ok := strings.CutSuffix(cause, " signal received"); ok {
		return zap.String("signal", sig)
	}
	return zap.String("cause", cause)
}

// report logs the one summary line of a cycle.
func report(log *zap.Logger, s summary.Summary, scanErr error) {
	fields := []zap.Field{
		zap.Int("containers", s.Containers), zap.Int("gpu_containers", s.GPUContainers),
		zap.Int("host_gpu_processes", s.HostProcesses), zap.Int("events", s.Events),
		zap.Bool("docker_ok", s.DockerOK), zap.Bool("gpu_ok", s.GPUOK),
		zap.Duration("duration", s.Duration),
		zap.Duration("gather", s.Phases.Gather), zap.Duration("docker", s.Phases.Docker),
		zap.Duration("reconcile", s.Phases.Reconcile), zap.Duration("deliver", s.Phases.Deliver),
	}
	if s.PendingEvents > 0 {
		fields = append(fields, zap.Int("pending_events", s.PendingEvents))
	}
	if scanErr == context.DeadlineExceeded {
		fields = append(fields, zap.Bool("deadline_exceeded", true))
	}
	log.Info("scan complete: "+s.StatusLine(), fields...)
}

// watchdog pings WATCHDOG=1 at half of WATCHDOG_USEC, but only while the
// loop makes progress: idle between scans, or in a scan younger than its
// deadline. A scan stuck past its deadline stops the pings, and systemd
// kills and restarts the service after WatchdogSec.
func watchdog(ctx context.Context, scanStart *atomic.Int64, elapsed func() time.Duration, stuckAfter time.Duration, log *zap.Logger) {
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return
	}
	t := time.NewTicker(every / 2)
	defer t.Stop()
	stuck := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := scanStart.Load()
		if s != idle && elapsed()-time.Duration(s) > stuckAfter {
			if !stuck {
				log.Error("scan stuck past its deadline; withholding watchdog pings so that systemd restarts the service", zap.Duration("stuck_after", stuckAfter))
				stuck = true
			}
			continue
		}
		stuck = false
		daemon.SdNotify(false, daemon.SdNotifyWatchdog)
	}
}

// idle marks scanStart between scans.
const idle = -1

// Debounce returns a function to call on every change and the channel it
// feeds: the first call starts a timer of window, calls until it fires are
// folded into it, and then one value goes to the channel (buffer one, never
// blocking). Pass the channel as Options.Trigger. While changes keep coming
// (one within first of the last window closing) the window doubles, up to
// most; after a longer pause it is back to first. So an isolated change is
// seen within first, and continuous churn causes at most one scan (one
// state write) per most.
func Debounce(first, most time.Duration) (func(), <-chan struct{}) {
	most = max(most, first)
	ch := make(chan struct{}, 1)
	var mu sync.Mutex
	var pending bool
	var lastFire time.Time
	window := first
	return func() {
		mu.Lock()
		defer mu.Unlock()
		if pending {
			return
		}
		pending = true
		window = nextWindow(window, lastFire, time.Now(), first, most)
		time.AfterFunc(window, func() {
			mu.Lock()
			pending, lastFire = false, time.Now()
			mu.Unlock()
			select {
			case ch <- struct{}{}:
			default:
			}
		})
	}, ch
}

// nextWindow is the debounce window for a change at now, the last fire
// having been at lastFire (zero: never). A change that comes within first
// of the last window closing (within window+first of the fire) means the
// changes are continuous: the window doubles, up to most. Any later, and
// the window is back to first. Measured against the window alone, changes
// every 2×first would always find the first window just over and scan at
// every change; measured against a longer span, changes half a second
// apart (someone starting containers by hand) would wait the grown window
// instead of first.
func nextWindow(window time.Duration, lastFire, now time.Time, first, most time.Duration) time.Duration {
	if lastFire.IsZero() || now.Sub(lastFire) >= window+first {
		return first
	}
	return min(window*2, most)
}
