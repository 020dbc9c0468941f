// Package logging builds the daemon's zap logger: human-readable console
// lines on a terminal or in tests, native journald entries under systemd;
// and the slog bridge (slog.go) for libraries that log through log/slog.
package logging

import (
	"fmt"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Formats accepted by New.
const (
	FormatAuto    = "auto"
	FormatConsole = "console"
	FormatJournal = "journal"
	FormatJSON    = "json"
)

// New returns a logger writing in format at level ("debug", "info", "warn",
// "error").
func New(format, level string) (*zap.Logger, error) { return newLogger(format, level, os.Stderr) }

func newLogger(format, level string, w zapcore.WriteSyncer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	if format == FormatAuto {
		format = FormatConsole
		if underJournal() {
			format = FormatJournal
		}
	}
	var core zapcore.Core
	switch format {
	case FormatConsole, FormatJSON:
		cfg := zap.NewProductionEncoderConfig()
		cfg.EncodeTime = zapcore.ISO8601TimeEncoder
		cfg.EncodeDuration = zapcore.StringDurationEncoder
		var enc zapcore.Encoder
		if format == FormatConsole {
			cfg.EncodeLevel = zapcore.CapitalLevelEncoder
			enc = zapcore.NewConsoleEncoder(cfg)
		} else {
			enc = zapcore.NewJSONEncoder(cfg)
		}
		core = zapcore.NewCore(enc, zapcore.Lock(w), lvl)
	case FormatJournal:
		core = newJournalCore(lvl)
	default:
		return nil, fmt.Errorf("--log-format %q: want auto, console, json or journal", format)
	}
	return zap.New(core), nil
}
