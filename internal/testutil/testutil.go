// Package testutil holds the helpers the tests share: one rig for the two
// files a scan writes, one polling helper and one captured logger. It is
// imported by tests only.
package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Files is a state file and an event log in a test's directory, read back
// the way consumers read them.
type Files struct {
	t          testing.TB
	Dir        string
	StatePath  string
	EventsPath string
	consumed   int // event lines already returned by NewEvents
}

// NewFiles names the two files in a fresh temporary directory.
func NewFiles(t testing.TB) *Files {
	return FilesIn(t, t.TempDir())
}

// FilesIn names state.json and events.jsonl in dir.
func FilesIn(t testing.TB, dir string) *Files {
	return &Files{t: t, Dir: dir, StatePath: filepath.Join(dir, "state.json"), EventsPath: filepath.Join(dir, "events.jsonl")}
}

// State reads the state file back, failing the test when it does not parse.
func (f *Files) State() inventory.State {
	f.t.Helper()
	st, err := inventory.Read(f.StatePath)
	if err != nil {
		f.t.Fatalf("state file: %v", err)
	}
	return st
}

// Events reads the whole event log, failing the test on a bad or partial
// line.
func (f *Files) Events() []event.Envelope {
	f.t.Helper()
	return ReadLog(f.t, f.EventsPath)
}

// ReadLog reads a whole event log with event.Reader, failing the test on a
// line that is not an event and on a partial last line. A missing log is
// an empty one.
func ReadLog(t testing.TB, path string) []event.Envelope {
	t.Helper()
	var out []event.Envelope
	for e, err := range (event.Reader{Path: path}).Events(context.Background()) {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.Pos.Partial {
			t.Fatalf("%s ends in a partial line: %q", path, e.Raw)
		}
		out = append(out, e)
	}
	return out
}

// NewEvents returns the event lines appended since the last call.
func (f *Files) NewEvents() []event.Envelope {
	f.t.Helper()
	all := f.Events()
	out := all[min(f.consumed, len(all)):]
	f.consumed = len(all)
	return out
}

// Details decodes an event's details as a map.
func Details(t testing.TB, e event.Envelope) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(e.Details, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// FaultRand is the source of a test's random fault points (where in a
// cycle a kill lands). Its seed is DS01_FAULT_SEED when set, to replay a
// failure, and otherwise new each run; the test logs it either way.
func FaultRand(t testing.TB) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DS01_FAULT_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("DS01_FAULT_SEED=%q: %v", s, err)
		}
		seed = n
	}
	t.Logf("random fault points from seed %d (replay: DS01_FAULT_SEED=%d go test -run '^%s$')", seed, seed, t.Name())
	return rand.New(rand.NewPCG(seed, seed))
}

// Eventually polls cond every 50 ms and fails the test when it does not
// hold within limit.
func Eventually(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(limit, cond) {
		t.Fatalf("%s: not within %v", what, limit)
	}
}

// Poll polls cond every 50 ms until it holds (true) or limit has passed
// (false), for a test that says more than Eventually when it fails.
func Poll(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Logger returns a logger that records JSON lines, and a function that
// returns what was logged so far.
func Logger() (*zap.Logger, func() string) {
	var mu sync.Mutex
	var buf bytes.Buffer
	ws := zapcore.AddSync(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}))
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), ws, zapcore.DebugLevel)
	return zap.New(core), func() string {
		mu.Lock()
		defer mu.Unlock()
		return buf.String()
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// NotifySocket listens where a service's sd_notify messages go (a unix
// datagram socket in the test's directory) and delivers each message on
// the channel.
func NotifySocket(t testing.TB) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	out := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(out)
				return
			}
			out <- string(buf[:n])
		}
	}()
	return path, out
}

// Buffer is a bytes.Buffer safe to write from one goroutine (a process's
// output, a logger) while the test reads it from another.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *Buffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }
