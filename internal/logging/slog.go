package logging

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// WebLogger is the *slog.Logger the exporter-toolkit logs to, written
// through the daemon's zap logger. The toolkit's info lines ("Listening
// on", "TLS is enabled") repeat the daemon's own start line, so they are
// debug here; the HTTP server's errors (failed TLS handshakes, one per
// scanner or misconfigured client) reach it at debug level too. What stays
// visible at info, a web configuration that became unreadable after the
// start, is logged at most once a minute per message.
func WebLogger(log *zap.Logger) *slog.Logger {
	sampled := log.Named("web").WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return onceAMinute{Core: c, seen: &seenMessages{at: map[seenKey]time.Time{}}}
	}))
	return slog.New(&zapHandler{log: sampled})
}

// onceAMinute passes the first entry of each level and message, and drops
// the same again within a minute. (zap's sampler would do, but holds 450 KB
// of counters from the start, for a logger that is all but silent.)
type onceAMinute struct {
	zapcore.Core
	seen *seenMessages // shared by the cores With makes
}

type seenKey struct {
	level zapcore.Level
	msg   string
}

type seenMessages struct {
	mu sync.Mutex
	at map[seenKey]time.Time
}

func (o onceAMinute) With(fs []zapcore.Field) zapcore.Core {
	return onceAMinute{Core: o.Core.With(fs), seen: o.seen}
}

func (o onceAMinute) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if !o.Enabled(e.Level) {
		return ce
	}
	k := seenKey{e.Level, e.Message}
	o.seen.mu.Lock()
	last, ok := o.seen.at[k]
	pass := !ok || e.Time.Sub(last) >= time.Minute || e.Time.Before(last)
	if pass {
		if len(o.seen.at) >= 256 { // messages are the toolkit's few constants
			clear(o.seen.at)
		}
		o.seen.at[k] = e.Time
	}
	o.seen.mu.Unlock()
	if !pass {
		return ce
	}
	return o.Core.Check(e, ce)
}

// zapHandler is a slog.Handler over a zap.Logger.
type zapHandler struct {
	log    *zap.Logger
	fields []zap.Field
	group  string // prefix of the keys, "a.b."
}

func zapLevel(l slog.Level) zapcore.Level {
	switch {
	case l >= slog.LevelError:
		return zapcore.ErrorLevel
	case l >= slog.LevelWarn:
		return zapcore.WarnLevel
	default: // the toolkit's info is the daemon's debug
		return zapcore.DebugLevel
	}
}

func (h *zapHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.log.Core().Enabled(zapLevel(l))
}

func (h *zapHandler) Handle(_ context.Context, r slog.Record) error {
	ce := h.log.Check(zapLevel(r.Level), r.Message)
	if ce == nil {
		return nil
	}
	fields := slices.Clone(h.fields)
	r.Attrs(func(a slog.Attr) bool {
		fields = h.appendAttr(fields, h.group, a)
		return true
	})
	ce.Write(fields...)
	return nil
}

func (h *zapHandler) appendAttr(fields []zap.Field, prefix string, a slog.Attr) []zap.Field {
	v := a.Value.Resolve()
	key := prefix + a.Key
	switch v.Kind() {
	case slog.KindGroup:
		if a.Key != "" {
			prefix = key + "."
		}
		for _, g := range v.Group() {
			fields = h.appendAttr(fields, prefix, g)
		}
		return fields
	case slog.KindString:
		return append(fields, zap.String(key, v.String()))
	case slog.KindInt64:
		return append(fields, zap.Int64(key, v.Int64()))
	case slog.KindUint64:
		return append(fields, zap.Uint64(key, v.Uint64()))
	case slog.KindFloat64:
		return append(fields, zap.Float64(key, v.Float64()))
	case slog.KindBool:
		return append(fields, zap.Bool(key, v.Bool()))
	case slog.KindDuration:
		return append(fields, zap.Duration(key, v.Duration()))
	case slog.KindTime:
		return append(fields, zap.Time(key, v.Time()))
	}
	if err, ok := v.Any().(error); ok {
		return append(fields, zap.NamedError(key, err))
	}
	return append(fields, zap.Any(key, v.Any()))
}

func (h *zapHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.fields = slices.Clone(h.fields)
	for _, a := range as {
		n.fields = n.appendAttr(n.fields, h.group, a)
	}
	return &n
}

func (h *zapHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.group = h.group + name + "."
	return &n
}
