package logging

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap/zapcore"
)

// underJournal reports whether stderr is the journal stream systemd gave
// us: JOURNAL_STREAM holds "<dev>:<inode>" of that stream.
func underJournal() bool {
	v := os.Getenv("JOURNAL_STREAM")
	dev, ino, ok := strings.Cut(v, ":")
	if !ok || !journal.Enabled() {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		return false
	}
	return strconv.FormatUint(uint64(st.Dev), 10) == dev && strconv.FormatUint(st.Ino, 10) == ino
}

// journalCore sends each entry to journald as a native entry: MESSAGE,
// PRIORITY, and one upper-cased field per zap field (container_id becomes
// CONTAINER_ID=), so `journalctl CONTAINER_ID=<id>` works.
type journalCore struct {
	zapcore.LevelEnabler
	fields []zapcore.Field
}

func newJournalCore(l zapcore.LevelEnabler) zapcore.Core { return &journalCore{LevelEnabler: l} }

func (c *journalCore) With(fs []zapcore.Field) zapcore.Core {
	return &journalCore{LevelEnabler: c.LevelEnabler, fields: append(append([]zapcore.Field{}, c.fields...), fs...)}
}

func (c *journalCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *journalCore) Sync() error { return nil }

func priority(l zapcore.Level) journal.Priority {
	switch {
	case l >= zapcore.DPanicLevel:
		return journal.PriCrit
	case l == zapcore.ErrorLevel:
		return journal.PriErr
	case l == zapcore.WarnLevel:
		return journal.PriWarning
	case l == zapcore.InfoLevel:
		return journal.PriInfo
	}
	return journal.PriDebug
}

// JournalVars renders zap fields as journald variables. Names are
// upper-cased and restricted to A-Z, 0-9 and _ as journald requires.
// Values may hold any bytes: the native protocol carries newlines safely,
// so a user name cannot forge another entry.
func JournalVars(fs []zapcore.Field) map[string]string {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fs {
		f.AddTo(enc)
	}
	vars := make(map[string]string, len(enc.Fields))
	for k, v := range enc.Fields {
		name := journalName(k)
		if name == "" {
			continue
		}
		vars[name] = fmt.Sprint(v)
	}
	return vars
}

func journalName(k string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(k) {
		switch {
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9' && b.Len() > 0, r == '_' && b.Len() > 0:
			b.WriteRune(r)
		case b.Len() > 0:
			b.WriteByte('_')
		}
	}
	name := b.String()
	switch name {
	case "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC":
		return "DS01_" + name
	}
	return name
}

func (c *journalCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	vars := JournalVars(append(append([]zapcore.Field{}, c.fields...), fs...))
	vars["SYSLOG_IDENTIFIER"] = "ds01-detectord"
	return journal.Send(e.Message, priority(e.Level), vars)
}
