package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const forged = "eve\n2026-02-04T10:00:00Z\tINFO\tcontainer removed: forged\x1b[2J"

type buf struct{ bytes.Buffer }

func (b *buf) Sync() error { return nil }

// A user name with a newline and an escape sequence cannot forge a line.
func TestConsoleAndJSONLinesCannotBeForged(t *testing.T) {
	for _, format := range []string{FormatConsole, FormatJSON} {
		var b buf
		log, err := newLogger(format, "info", &b)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("container discovered: abc123def456 x", zap.String("user", forged), zap.String("cmdline", "a\rb"))
		out := b.String()
		if strings.Count(out, "\n") != 1 || strings.ContainsAny(strings.TrimSuffix(out, "\n"), "\n\r\x1b") {
			t.Errorf("%s: %q", format, out)
		}
		if format == FormatJSON {
			var m map[string]any
			if err := json.Unmarshal([]byte(out), &m); err != nil || m["user"] != forged {
				t.Errorf("json line does not round-trip: %v %v", err, m["user"])
			}
		}
	}
}

func TestJournalVars(t *testing.T) {
	vars := JournalVars([]zapcore.Field{
		zap.String("container_id", "abc123def456"), zap.String("event_type", "detection.container_discovered"),
		zap.String("user", forged), zap.Int("pid", 42), zap.String("message", "x"), zap.String("weird-key.1", "v"), zap.String("_trusted", "t"),
	})
	want := map[string]string{
		"CONTAINER_ID": "abc123def456", "EVENT_TYPE": "detection.container_discovered", "USER": forged, "PID": "42",
		"DS01_MESSAGE": "x", "WEIRD_KEY_1": "v", "TRUSTED": "t",
	}
	for k, v := range want {
		if vars[k] != v {
			t.Errorf("%s = %q, want %q", k, vars[k], v)
		}
	}
	if len(vars) != len(want) {
		t.Errorf("vars %v", vars)
	}
}

func TestFormats(t *testing.T) {
	if _, err := New("xml", "info"); err == nil {
		t.Error("bad format accepted")
	}
	if _, err := New(FormatConsole, "loud"); err == nil {
		t.Error("bad level accepted")
	}
	t.Setenv("JOURNAL_STREAM", "")
	if underJournal() {
		t.Error("journal detected without JOURNAL_STREAM")
	}
	t.Setenv("JOURNAL_STREAM", "1:2")
	if underJournal() {
		t.Error("journal detected for a stream that is not stderr")
	}
}
