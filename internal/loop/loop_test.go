package loop

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"os/signal"
	"path/filepath"
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

// Most tests here run in a synctest bubble: the loop's real ticker, scan
// deadlines, watchdog ticker and debounce timers run on the bubble's fake
// clock, which moves only when every goroutine in it is blocked. So a test
// says at which instant a scan starts or a ping comes, and takes no wall
// time. Everything a bubbled test touches is made inside its bubble.

// scanner counts cycles and can hold them until released.
type scanner struct {
	mu        sync.Mutex
	running   int
	maxRun    int
	cycles    atomic.Int32
	started   chan time.Time // each cycle's start, when it starts
	hold      chan struct{}  // when non-nil, cycles wait on it
	ignoreCtx bool           // a stuck scan that ignores its deadline
	ctxErrs   chan error     // the context error each cycle saw
	quit      chan struct{}  // closed when the test ends: held cycles return
}

func newScanner() *scanner {
	return &scanner{started: make(chan time.Time, 100), ctxErrs: make(chan error, 100), quit: make(chan struct{})}
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
	s.started <- time.Now()
	if hold != nil {
		if ignore {
			select {
			case <-hold:
			case <-s.quit:
			}
		} else {
			select {
			case <-hold:
			case <-ctx.Done():
			case <-s.quit:
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

// waitStart waits for the next cycle to start and returns when it did. In
// a bubble, the minute passes at once when nothing else can happen.
func waitStart(t *testing.T, s *scanner) time.Time {
	t.Helper()
	select {
	case at := <-s.started:
		return at
	case <-time.After(time.Minute):
		t.Fatal("no cycle started")
		return time.Time{}
	}
}

// noStart checks, in a bubble, that no cycle has started and none is
// about to at this instant.
func noStart(t *testing.T, s *scanner, what string) {
	t.Helper()
	synctest.Wait()
	select {
	case at := <-s.started:
		t.Fatalf("%s: an extra cycle started at %v", what, at)
	default:
	}
}

// pass lets d go by on the bubble's clock, then lets the goroutines it
// woke run until they block.
func pass(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

// scanEnd waits for the running cycle to end and returns the context
// error it saw.
func scanEnd(t *testing.T, s *scanner) error {
	t.Helper()
	select {
	case err := <-s.ctxErrs:
		return err
	case <-time.After(time.Minute):
		t.Fatal("the cycle did not end")
		return nil
	}
}

// quiet points sd_notify nowhere (no NOTIFY_SOCKET, no watchdog), for a
// test that does not read the messages.
func quiet(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
}

// notifier is a real NOTIFY_SOCKET: a unix datagram socket the
// environment points at. Nothing in a bubble may wait on it (a goroutine
// blocked reading a socket is not durably blocked, so the bubble's clock
// would stop), so take reads it without waiting: sd_notify's datagram is
// in the socket's queue when its send returns, and synctest.Wait returns
// only once the senders are blocked again. The kernel queues few
// datagrams (net.unix.max_dgram_qlen, 10 by default) before a send
// blocks, so take them at least every few pings.
type notifier struct {
	t    *testing.T
	conn *net.UnixConn
}

func notify(t *testing.T, watchdog time.Duration) *notifier {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "")
	if watchdog > 0 {
		t.Setenv("WATCHDOG_USEC", strconv.FormatInt(watchdog.Microseconds(), 10))
		t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	}
	return &notifier{t, conn}
}

// take returns the messages sent so far, oldest first, after letting the
// bubble's goroutines run until they block.
func (n *notifier) take() []string {
	n.t.Helper()
	synctest.Wait()
	raw, err := n.conn.SyscallConn()
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	var rerr error
	buf := make([]byte, 4096)
	err = raw.Read(func(fd uintptr) bool {
		for {
			m, _, err := syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
			if err != nil {
				if err != syscall.EAGAIN {
					rerr = err
				}
				return true // never wait
			}
			out = append(out, string(buf[:m]))
		}
	})
	if err != nil || rerr != nil {
		n.t.Fatal(err, rerr)
	}
	return out
}

// pings counts the watchdog pings among messages.
func pings(msgs []string) int {
	n := 0
	for _, m := range msgs {
		if m == "WATCHDOG=1" {
			n++
		}
	}
	return n
}

// run runs the loop (in the bubble, when called in one) until stop, or
// the end of a failed test (which stops it, and with it the held cycles).
func run(t *testing.T, s *scanner, log *zap.Logger, opt Options) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var err error
	go func() {
		err = Run(ctx, s, log, opt)
		close(done)
	}()
	t.Cleanup(func() {
		close(s.quit)
		cancel()
		<-done
	})
	return func() error {
		cancel()
		select {
		case <-done:
			return err
		case <-time.After(time.Minute):
			t.Fatal("Run did not return")
			return nil
		}
	}
}

// A tick that falls during a scan is dropped, not queued: the next scan
// comes at the next tick, not as the long scan ends.
func TestTicksDuringAScanAreDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		quiet(t)
		s := newScanner()
		hold := make(chan struct{})
		s.setHold(hold, false)
		t0 := time.Now()
		stop := run(t, s, zap.NewNop(), Options{Interval: time.Second, ScanTimeout: time.Minute})
		if at := waitStart(t, s); !at.Equal(t0) {
			t.Fatalf("first scan %v after the start, want at once", at.Sub(t0))
		}
		pass(5500 * time.Millisecond) // the ticks at 1 s to 5 s fall during the scan
		s.setHold(nil, false)
		close(hold)
		noStart(t, s, "ticks during a scan")
		if at := waitStart(t, s); at.Sub(t0) != 6*time.Second {
			t.Fatalf("next scan %v after the start, want at the next tick (6s)", at.Sub(t0))
		}
		stop()
		if s.maxRun != 1 || s.cycles.Load() != 2 {
			t.Fatalf("max concurrent %d, cycles %d", s.maxRun, s.cycles.Load())
		}
	})
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
	synctest.Test(t, func(t *testing.T) {
		quiet(t)
		s := newScanner()
		hold := make(chan struct{})
		s.setHold(hold, false)
		hup := make(chan struct{}, 1)
		reloads := 0
		t0 := time.Now()
		stop := run(t, s, zap.NewNop(), Options{Interval: time.Hour, ScanTimeout: time.Minute, Rescan: hup, OnRescan: func() { reloads++ }})
		waitStart(t, s)
		for i := 0; i < 10; i++ {
			rescan(hup)
		}
		s.setHold(nil, false)
		close(hold)
		// Exactly one follow-up scan, at once.
		if at := waitStart(t, s); !at.Equal(t0) {
			t.Fatalf("follow-up scan %v later", at.Sub(t0))
		}
		noStart(t, s, "ten rescans asked during one scan")
		// A rescan asked while idle comes at once.
		pass(time.Minute)
		rescan(hup)
		if at := waitStart(t, s); at.Sub(t0) != time.Minute {
			t.Fatalf("rescan while idle started %v after the start, want at once (1m)", at.Sub(t0))
		}
		stop()
		if s.cycles.Load() != 3 || s.maxRun != 1 || reloads != 2 {
			t.Fatalf("cycles %d, max concurrent %d, %d reloads", s.cycles.Load(), s.maxRun, reloads)
		}
	})
}

func TestScanDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		quiet(t)
		s := newScanner()
		s.setHold(make(chan struct{}), false) // never released: the deadline ends it
		t0 := time.Now()
		stop := run(t, s, zap.NewNop(), Options{Interval: time.Second, ScanTimeout: 50 * time.Millisecond})
		waitStart(t, s)
		if err := scanEnd(t, s); err != context.DeadlineExceeded || time.Since(t0) != 50*time.Millisecond {
			t.Fatalf("first scan ended after %v with %v, want the 50ms deadline", time.Since(t0), err)
		}
		// Later cycles carry on, at the next tick.
		if at := waitStart(t, s); at.Sub(t0) != time.Second {
			t.Fatalf("second scan %v after the start, want 1s", at.Sub(t0))
		}
		if err := scanEnd(t, s); err != context.DeadlineExceeded || time.Since(t0) != time.Second+50*time.Millisecond {
			t.Fatalf("second scan ended after %v with %v", time.Since(t0), err)
		}
		stop()
	})
}

func TestNotifyReadyStatusStopping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := notify(t, 0)
		s := newScanner()
		hup := make(chan struct{}, 1)
		stop := run(t, s, zap.NewNop(), Options{Interval: time.Hour, ScanTimeout: time.Minute, Rescan: hup})
		waitStart(t, s)
		msgs := n.take()
		if len(msgs) != 1 || !strings.Contains(msgs[0], "READY=1") || !strings.Contains(msgs[0], "STATUS=3 containers (0 with GPU)") {
			t.Fatalf("after the first cycle: %q", msgs)
		}
		rescan(hup)
		waitStart(t, s)
		if msgs := n.take(); len(msgs) != 1 || strings.Contains(msgs[0], "READY=1") || !strings.HasPrefix(msgs[0], "STATUS=") {
			t.Fatalf("after the second cycle: %q", msgs)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if msgs := n.take(); !reflect.DeepEqual(msgs, []string{"STOPPING=1"}) {
			t.Fatalf("at the stop: %q", msgs)
		}
	})
}

// SIGTERM, through main's signal.NotifyContext, ends the loop's context
// in the middle of a cycle: the loop stops after it, saying why. This one
// runs on the real clock, outside a bubble: the runtime delivers a signal
// from its own goroutine, and a bubble's channels may not be touched from
// outside it.
func TestSIGTERMWaitsForTheCycle(t *testing.T) {
	path, msgs := testutil.NotifySocket(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "")
	s := newScanner()
	hold := make(chan struct{})
	s.setHold(hold, true) // a scan that finishes its write whatever the context says
	done := make(chan error, 1)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	core, logs := observer.New(zap.InfoLevel)
	go func() {
		done <- Run(ctx, s, zap.New(core), Options{Interval: time.Hour, ScanTimeout: time.Minute})
	}()
	select {
	case <-s.started:
	case <-time.After(10 * time.Second):
		t.Fatal("no cycle started")
	}
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

// The watchdog pings at half of WATCHDOG_USEC while the loop is idle or
// in a scan no older than its deadline plus the grace, stops while a scan
// is stuck past that, and pings again once the scan returns. The pings are
// taken every 50 ms of the bubble's clock, one ping interval: each step
// ends with exactly one ping, or none while the scan is stuck.
func TestWatchdogPingsOnlyWhileProgressing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := notify(t, 100*time.Millisecond) // pings every 50 ms
		core, logs := observer.New(zap.InfoLevel)
		s := newScanner()
		t0 := time.Now()
		stop := run(t, s, zap.New(core), Options{Interval: time.Second, ScanTimeout: 50 * time.Millisecond, StuckGrace: 50 * time.Millisecond})
		waitStart(t, s)
		// The scan at the tick at 1 s ignores its deadline and hangs until
		// 1.5 s: stuck from 1.1 s (deadline 50 ms, grace 50 ms).
		hold := make(chan struct{})
		s.setHold(hold, true)
		const step = 50 * time.Millisecond
		var got, want []string
		for at := step; at <= 2500*time.Millisecond; at += step {
			pass(time.Until(t0.Add(at)))
			p := pings(n.take())
			w := 1
			if at > 1100*time.Millisecond && at <= 1500*time.Millisecond {
				w = 0
			}
			got = append(got, at.String()+":"+strconv.Itoa(p))
			want = append(want, at.String()+":"+strconv.Itoa(w))
			if at == 1500*time.Millisecond {
				s.setHold(nil, false)
				close(hold)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("pings per 50 ms step (time:pings)\n got %v\nwant %v", got, want)
		}
		if l := logs.FilterMessageSnippet("scan stuck past its deadline").All(); len(l) != 1 {
			t.Errorf("%d stuck lines, want 1 for the stuck spell", len(l))
		}
		stop()
	})
}

// Stuck-scan detection is immune to wall-clock steps because every
// duration the loop measures is a difference of two time.Now readings
// (time.Since, Sub), which Go takes on the monotonic clock. A bubble's
// fake clock cannot step the wall clock apart from the monotonic one, so
// this is checked on the source instead: the package's non-test code
// calls nothing that makes an instant without a monotonic reading
// (time.Unix, time.Date, time.Parse, ...) or reads or keeps only the wall
// clock of one (Unix, UnixNano, Round, UTC, In, ...), either of which
// would let a stepped clock age or rejuvenate a scan. The check goes by
// name, without types (type-checking would compile the time package's
// export data, seconds in a fresh GOCACHE): a Duration's Round or
// Truncate would be flagged too, and should then be written otherwise.
func TestOnlyMonotonicClockReadings(t *testing.T) {
	wallFuncs := map[string]bool{"Unix": true, "UnixMilli": true, "UnixMicro": true, "Date": true, "Parse": true, "ParseInLocation": true}
	wallMethods := map[string]bool{
		"Unix": true, "UnixNano": true, "UnixMilli": true, "UnixMicro": true, "Round": true, "Truncate": true,
		"UTC": true, "Local": true, "In": true, "AddDate": true, "MarshalBinary": true, "MarshalText": true, "MarshalJSON": true,
	}
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	since := 0
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "time" {
				switch {
				case sel.Sel.Name == "Since":
					since++
				case wallFuncs[sel.Sel.Name]:
					t.Errorf("%s: time.%s makes an instant without a monotonic reading", fset.Position(sel.Pos()), sel.Sel.Name)
				}
				return true
			}
			if wallMethods[sel.Sel.Name] {
				t.Errorf("%s: .%s reads or keeps only the wall clock of a time.Time; measure durations with time.Since or Sub", fset.Position(sel.Pos()), sel.Sel.Name)
			}
			return true
		})
	}
	if since == 0 {
		t.Fatal("no time.Since in the package: the check did not see the code")
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
// comes after that fire (pass lets the timer run first).
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
			changed()
			pass(2 * first)
		}
		pass(time.Second)
		// After the quiet second, a change is seen within first again.
		changed()
		pass(time.Second)
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
