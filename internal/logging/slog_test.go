package logging

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The exporter-toolkit's messages reach the daemon's log: its info as
// debug, warnings and errors as such, attributes as fields; a message that
// repeats every scrape is logged once a minute.
func TestWebLogger(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := WebLogger(zap.New(core))
	l.Info("Listening on", "address", "127.0.0.1:19400")
	l.With("component", "web").WithGroup("tls").Warn("odd", "n", 3, slog.Group("g", "b", true))
	for range 5 {
		l.Error("Unable to parse configuration", "err", errors.New("boom"))
	}
	got := logs.AllUntimed()
	if len(got) != 3 {
		t.Fatalf("%d entries: %+v", len(got), got)
	}
	if e := got[0]; e.Level != zapcore.DebugLevel || e.LoggerName != "web" || e.ContextMap()["address"] != "127.0.0.1:19400" {
		t.Errorf("info: %+v", e)
	}
	if e := got[1]; e.Level != zapcore.WarnLevel || e.ContextMap()["component"] != "web" || e.ContextMap()["tls.n"] != int64(3) || e.ContextMap()["tls.g.b"] != true {
		t.Errorf("warn: %+v %v", e, e.ContextMap())
	}
	if e := got[2]; e.Level != zapcore.ErrorLevel || e.ContextMap()["err"] != "boom" {
		t.Errorf("error: %+v %v", e, e.ContextMap())
	}
	// Debug is dropped when the daemon logs at info.
	core, logs = observer.New(zapcore.InfoLevel)
	l = WebLogger(zap.New(core))
	if l.Enabled(t.Context(), slog.LevelInfo) {
		t.Error("toolkit info enabled at the daemon's info level")
	}
	l.Info("TLS is enabled.")
	if logs.Len() != 0 {
		t.Errorf("%+v", logs.All())
	}
}

type stepClock struct{ now time.Time }

func (c *stepClock) Now() time.Time                         { return c.now }
func (c *stepClock) NewTicker(d time.Duration) *time.Ticker { return time.NewTicker(d) }

// A repeated message comes through again once a minute has passed, at
// each level apart.
func TestWebLoggerOnceAMinute(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	clock := &stepClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	l := WebLogger(zap.New(core, zap.WithClock(clock)))
	for _, step := range []time.Duration{0, 30 * time.Second, 29 * time.Second, time.Second, 59 * time.Second} {
		clock.now = clock.now.Add(step)
		l.Warn("config unreadable")
		l.Error("config unreadable")
	}
	// At 0 and 60 s, each level: four lines.
	if n := logs.Len(); n != 4 {
		t.Errorf("%d lines, want 4: %+v", n, logs.AllUntimed())
	}
}
