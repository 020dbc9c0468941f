package statefile

import (
	"bytes"
	"testing"

	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(referenceFile))
	f.Add([]byte(`{"containers":{}}`))
	f.Add([]byte(`{"schema_version":2,"containers":{"a":{"id":"a","detected_at":"2026-01-01T00:00:00Z"}},"sources":{"docker":{"ok":true}}}`))
	f.Add([]byte(`[1,2]`))
	f.Add([]byte(`{"containers":{"a":{"id":"b"}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := inventory.Parse(b)
		if err != nil {
			return
		}
		// Whatever parses must encode, and re-parse to the same encoding.
		enc, err := Encode(st)
		if err != nil {
			t.Fatalf("parsed state does not encode: %v", err)
		}
		st2, err := inventory.Parse(enc)
		if err != nil {
			t.Fatalf("encoded state does not parse: %v\n%s", err, enc)
		}
		enc2, _ := Encode(st2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("not stable:\n%s\n%s", enc, enc2)
		}
		for _, c := range enc {
			if c >= 0x80 {
				t.Fatal("non-ASCII byte in the encoded state")
			}
		}
	})
}
