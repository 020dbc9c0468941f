package loop

import (
	"context"
	"os"
	"os/signal"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/internal/testutil"
)

// scanner counts cycles and can hold them until released.
type scanner struct {
	mu        sync.Mutex
	running   int
	maxRun    int
	cycles    atomic.Int32
	started   chan struct{} // receives at each cycle start
	hold      chan struct{} // when non-nil, cycles wait on it
	ignoreCtx bool          // a stuck scan that ignores its deadline
	ctxErrs   chan error    // the context error each cycle saw
}

func newScanner() *scanner {
	return &scanner{started: make(chan struct{}, 100), ctxErrs: make(chan error, 100)}
}

func (s *scanner) Scan(ctx context.Context, full bool) summary.Summary {
	s.mu.Lock()
	s.running++
	if s.running > s.maxRun {
		s.maxRun = s.running
	}
	hold, ignore := s.hold, s.ignoreCtx
	s.mu.Unlock()
	s.cycles.Add(1)
	s.started <- struct{}{}
	if hold != nil {
		if ignore {
			<-hold
		} else {
			select {
			case <-hold:
			case <-ctx.Done():
			}
		}
	}
	s.ctxErrs <- ctx.Err()
	s.mu.Lock()
	s.running--
	s.mu.Unlock()
	return summary.Summary{Containers: 3, DockerOK: true}
}

func (s *scanner) setHold(ch chan struct{}, ignoreCtx bool) {
	s.mu.Lock()
	s.hold, s.ignoreCtx = ch, ignoreCtx
	s.mu.Unlock()
}

func waitStart(t *testing.T, s *scanner) {
	t.Helper()
	select {
	case <-s.started:
	case <-time.After(10 * time.Second):
		t.Fatal("no cycle started")
	}
}

// tickUntilStart sends ticks until a cycle starts: a tick that lands just
// as a scan ends is dropped by design.
func tickUntilStart(t *testing.T, s *scanner, ticks chan time.Time) {
	t.Helper()
	for i := 0; i < 200; i++ {
		select {
		case ticks <- time.Now():
		default:
		}
		select {
		case <-s.started:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("no cycle started")
}

// noStart checks that no cycle starts within a short while.
func noStart(t *testing.T, s *scanner, what string) {
	t.Helper()
	select {
	case <-s.started:
		t.Fatalf("%s: an extra cycle started", what)
	case <-time.After(300 * time.Millisecond):
	}
}

// notify opens a real NOTIFY_SOCKET datagram listener and points the
// environment at it. Messages arrive on the returned channel.
func notify(t *testing.T, watchdog time.Duration) <-chan string {
	t.Helper()
	path, out := testutil.NotifySocket(t)
	t.Setenv("NOTIFY_SOCKET", path)
	if watchdog > 0 {
		t.Setenv("WATCHDOG_USEC", strconv.FormatInt(watchdog.Microseconds(), 10))
		t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	}
	return out
}

func run(t *testing.T, s *scanner, opt Options) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, s, zap.NewNop(), opt) }()
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
			return nil
		}
	}
}

func TestTicksDuringAScanAreDropped(t *testing.T) {
	notify(t, 0)
	s := newScanner()
	ticks := make(chan time.Time, 1) // like time.Ticker's channel
	hold := make(chan struct{})
	s.setHold(hold, false)
	stop := run(t, s, Options{ScanTimeout: time.Minute, Ticks: ticks})
	waitStart(t, s)
	for i := 0; i < 5; i++ { // ticks fall during the scan
		select {
		case ticks <- time.Now():
		default:
		}
	}
	s.setHold(nil, false)
	close(hold)
	noStart(t, s, "ticks during a scan")
	ticks <- time.Now()
	waitStart(t, s)
	stop()
	if s.maxRun != 1 || s.cycles.Load() != 2 {
		t.Fatalf("max concurrent %d, cycles %d", s.maxRun, s.cycles.Load())
	}
}

// rescan asks for a rescan the way main does on SIGHUP: a buffer of one
// and a send that never blocks.
func rescan(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func TestRescansCoalesce(t *testing.T) {
	notify(t, 0)
	s := newScanner()
	hold := make(chan struct{})
	s.setHold(hold, false)
	hup := make(chan struct{}, 1)
	reloads := 0
	stop := run(t, s, Options{ScanTimeout: time.Minute, Ticks: make(chan time.Time), Rescan: hup, OnRescan: func() { reloads++ }})
	waitStart(t, s)
	for i := 0; i < 10; i++ {
		rescan(hup)
	}
	s.setHold(nil, false)
	close(hold)
	waitStart(t, s) // exactly one follow-up scan
	noStart(t, s, "ten rescans asked during one scan")
	// A rescan asked while idle comes at once.
	rescan(hup)
	waitStart(t, s)
	stop()
	if s.cycles.Load() != 3 || s.maxRun != 1 || reloads != 2 {
		t.Fatalf("cycles %d, max concurrent %d, %d reloads", s.cycles.Load(), s.maxRun, reloads)
	}
}

func TestScanDeadline(t *testing.T) {
	notify(t, 0)
	s := newScanner()
	s.setHold(make(chan struct{}), false) // never released: the deadline ends it
	ticks := make(chan time.Time, 1)
	stop := run(t, s, Options{ScanTimeout: 50 * time.Millisecond, Ticks: ticks})
	waitStart(t, s)
	if err := <-s.ctxErrs; err != context.DeadlineExceeded {
		t.Fatalf("first scan ended with %v", err)
	}
	tickUntilStart(t, s, ticks) // later cycles carry on
	if err := <-s.ctxErrs; err != context.DeadlineExceeded {
		t.Fatalf("second scan ended with %v", err)
	}
	stop()
}

func TestNotifyReadyStatusStopping(t *testing.T) {
	msgs := notify(t, 0)
	s := newScanner()
	hup := make(chan struct{}, 1)
	stop := run(t, s, Options{ScanTimeout: time.Minute, Ticks: make(chan time.Time), Rescan: hup})
	waitStart(t, s)
	first := <-msgs
	if !strings.Contains(first, "READY=1") || !strings.Contains(first, "STATUS=3 containers (0 with GPU)") {
		t.Fatalf("first message %q", first)
	}
	rescan(hup)
	waitStart(t, s)
	if m := <-msgs; strings.Contains(m, "READY=1") || !strings.HasPrefix(m, "STATUS=") {
		t.Fatalf("second message %q", m)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if m := <-msgs; m != "STOPPING=1" {
		t.Fatalf("last message %q", m)
	}
}

// SIGTERM, through main's signal.NotifyContext, ends the loop's context
// in the middle of a cycle: the loop stops after it, saying why.
func TestSIGTERMWaitsForTheCycle(t *testing.T) {
	msgs := notify(t, 0)
	s := newScanner()
	hold := make(chan struct{})
	s.setHold(hold, true) // a scan that finishes its write whatever the context says
	done := make(chan error, 1)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	core, logs := observer.New(zap.InfoLevel)
	go func() {
		done <- Run(ctx, s, zap.New(core), Options{ScanTimeout: time.Minute, Ticks: make(chan time.Time)})
	}()
	waitStart(t, s)
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case <-done:
		t.Fatal("Run returned in the middle of a cycle")
	case <-time.After(200 * time.Millisecond):
	}
	close(hold)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop after the cycle")
	}
	if err := <-s.ctxErrs; err != context.Canceled {
		t.Errorf("the cycle's context was not cancelled: %v", err)
	}
	if m := <-msgs; !strings.Contains(m, "READY=1") {
		t.Errorf("first message %q", m)
	}
	if m := <-msgs; m != "STOPPING=1" {
		t.Errorf("last message %q", m)
	}
	l := logs.FilterMessage("stopping after the current cycle").All()
	if len(l) != 1 || l[0].ContextMap()["signal"] != "terminated" {
		t.Errorf("stop lines %+v", logs.All())
	}
}

func TestWatchdogPingsOnlyWhileProgressing(t *testing.T) {
	msgs := notify(t, 100*time.Millisecond) // pings every 50ms
	s := newScanner()
	ticks := make(chan time.Time, 1)
	stop := run(t, s, Options{ScanTimeout: 50 * time.Millisecond, StuckGrace: 50 * time.Millisecond, Ticks: ticks})
	waitStart(t, s)
	count := func(d time.Duration) int { return pings(msgs, d) }
	if n := count(400 * time.Millisecond); n < 2 {
		t.Fatalf("idle loop sent %d pings", n)
	}
	// A scan stuck past its deadline: the pings stop.
	hold := make(chan struct{})
	s.setHold(hold, true)
	tickUntilStart(t, s, ticks)
	count(300 * time.Millisecond) // deadline plus grace pass
	if n := count(400 * time.Millisecond); n != 0 {
		t.Fatalf("stuck scan: %d pings", n)
	}
	s.setHold(nil, false)
	close(hold)
	if n := count(400 * time.Millisecond); n < 2 {
		t.Fatalf("after the scan returned: %d pings", n)
	}
	stop()
}

// fakeMono is a monotonic clock the test moves by hand.
type fakeMono struct{ now atomic.Int64 }

func (c *fakeMono) elapsed() time.Duration  { return time.Duration(c.now.Load()) }
func (c *fakeMono) advance(d time.Duration) { c.now.Add(int64(d)) }

// Stuck-scan detection follows the monotonic clock, whatever the wall
// clock does: the scan's age is measured on Options.Elapsed only. Here an
// hour passes on it in a moment (and not a second on the wall), and the
// pings stop at once; a wall clock stepped back an hour would change
// nothing.
func TestWatchdogFollowsTheMonotonicClock(t *testing.T) {
	msgs := notify(t, 100*time.Millisecond)
	s := newScanner()
	ticks := make(chan time.Time, 1)
	clock := &fakeMono{}
	stop := run(t, s, Options{ScanTimeout: time.Hour, StuckGrace: time.Second, Ticks: ticks, Elapsed: clock.elapsed})
	waitStart(t, s)
	hold := make(chan struct{})
	s.setHold(hold, true)
	tickUntilStart(t, s, ticks)
	count := func(d time.Duration) int { return pings(msgs, d) }
	if n := count(300 * time.Millisecond); n < 2 {
		t.Fatalf("a young scan (on the monotonic clock) got %d pings", n)
	}
	clock.advance(time.Hour + 2*time.Second)
	count(100 * time.Millisecond)
	if n := count(300 * time.Millisecond); n != 0 {
		t.Fatalf("a scan an hour old on the monotonic clock still got %d pings", n)
	}
	s.setHold(nil, false)
	close(hold)
	stop()
}

// pings counts the WATCHDOG=1 messages that arrive within d.
func pings(msgs <-chan string, d time.Duration) int {
	n := 0
	end := time.After(d)
	for {
		select {
		case m := <-msgs:
			if m == "WATCHDOG=1" {
				n++
			}
		case <-end:
			return n
		}
	}
}

// The debounce window: churn (a change within first of the last window
// closing) doubles it up to most; a longer pause brings it back to first.
func TestNextWindow(t *testing.T) {
	first, most := 100*time.Millisecond, time.Second
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct {
		window time.Duration
		since  time.Duration // since the last fire; -1: never fired
		want   time.Duration
	}{
		{first, -1, first},
		{first, ms(100), ms(200)}, // a change every 200 ms: just after the 100 ms window closed, still churn
		{ms(200), ms(150), ms(400)},
		{ms(800), ms(50), most},
		{most, ms(1050), most},
		{most, ms(1100), first},   // quiet for first after the window closed
		{ms(200), ms(350), first}, // changes half a second apart: each seen within first
		{ms(400), ms(5000), first},
	} {
		last := time.Time{}
		if tc.since >= 0 {
			last = t0
		}
		if got := nextWindow(tc.window, last, t0.Add(tc.since), first, most); got != tc.want {
			t.Errorf("window %v, %v since the last fire: %v, want %v", tc.window, tc.since, got, tc.want)
		}
	}
}

// Changes every 2×first, for 30 of them, on the bubble's clock with
// Debounce's real timers: the window grows to most instead of firing once
// per change (the bug this guards against fired 30 times), and every
// change is followed by a fire. A change at the instant a window closes
// comes after that fire (synctest.Wait lets the timer run first).
func TestDebounceFollowsChurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		first, most := 10*time.Millisecond, 150*time.Millisecond
		changed, fired := Debounce(first, most)
		t0 := time.Now()
		var fires []time.Duration
		end, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-fired:
					fires = append(fires, time.Since(t0))
				case <-end:
					return
				}
			}
		}()
		for i := 0; i < 30; i++ {
			synctest.Wait()
			changed()
			time.Sleep(2 * first)
		}
		time.Sleep(time.Second)
		// After the quiet second, a change is seen within first again.
		changed()
		time.Sleep(time.Second)
		close(end)
		<-done
		// Changes at 0, 20, 40, ... 580 ms: fires at 10, 40, 80, 160, 310,
		// 470 and 630 ms, the window doubling 10, 20, 40, 80 ms, then held
		// at 150 ms; the changes in between are folded in. The change at
		// 1600 ms fires at 1610 ms.
		want := []time.Duration{10, 40, 80, 160, 310, 470, 630, 1610}
		for i := range want {
			want[i] *= time.Millisecond
		}
		if !reflect.DeepEqual(fires, want) {
			t.Errorf("fires at %v, want %v", fires, want)
		}
	})
}
