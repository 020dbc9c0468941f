package event

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func FuzzEncode(f *testing.F) {
	f.Add("alice", "alice-proj._.1001", "ds01/pytorch:latest", "python train.py", int64(0))
	f.Add("bj\u00f8rn<&>", "x", "", "a\nb\x1b[31m", int64(1700000000123456))
	f.Add(strings.Repeat("u", 5000), strings.Repeat("n", 3000), "i", "", int64(-1))
	f.Add("\xff\xfe", "\x00", "\u2028", "\ud7ff", int64(42))
	f.Fuzz(func(t *testing.T, user, name, image, cmdline string, usec int64) {
		ts := inventory.NewTime(time.UnixMicro(usec % (1 << 50)))
		for _, d := range []any{
			ContainerDiscoveredDetails{ContainerID: "abc", Name: name, Origin: "raw-docker", Image: image, GPUAccess: []string{}},
			HostProcessDiscoveredDetails{Pid: 1, Cmdline: cmdline, GPUUUID: image},
		} {
			line, res, err := Encode(Envelope{Timestamp: ts, EventType: ContainerDiscovered, User: user, Source: Source}, d)
			if err != nil {
				t.Fatal(err)
			}
			if len(line) > MaxLineBytes {
				t.Fatalf("line of %d bytes", len(line))
			}
			if !json.Valid(line) || bytes.ContainsAny(line, "\n\r") {
				t.Fatalf("invalid line %q", line)
			}
			for _, c := range line {
				if c < 0x20 || c >= 0x7f {
					t.Fatalf("raw byte %#x in line", c)
				}
			}
			e, err := Decode(line)
			if err != nil {
				t.Fatal(err)
			}
			if e.EventType != ContainerDiscovered || e.Source != Source || !e.Timestamp.Equal(ts.Time) {
				t.Fatalf("envelope does not round-trip: %+v", e)
			}
			if res.Truncated {
				continue
			}
			// Not truncated: user and details come back as sent (after
			// UTF-8 repair, which JSON encoding does).
			if e.User != repairUTF8(user) {
				t.Fatalf("user %q came back %q", user, e.User)
			}
			want, _ := json.Marshal(d)
			var a, b any
			json.Unmarshal(want, &a)
			json.Unmarshal(e.Details, &b)
			if ja, _ := json.Marshal(a); string(ja) != string(mustMarshal(b)) {
				t.Fatalf("details do not round-trip:\n%s\n%s", ja, e.Details)
			}
		}
	})
}

func mustMarshal(v any) []byte { b, _ := json.Marshal(v); return b }

// repairUTF8 replaces each invalid byte with U+FFFD, as encoding/json does.
func repairUTF8(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		b.WriteRune(r) // RuneError for an invalid byte (n == 1)
		s = s[n:]
	}
	return b.String()
}
