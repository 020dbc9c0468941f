package asciijson

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// indentCompact must write exactly what json.Indent writes.
func FuzzIndentCompact(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `{"a":[],"b":{},"c":[1,{"d":"x\"}y","e":null}],"f":"\\"}`, `"s"`, `[[],[[]],{"":{}}]`} {
		f.Add([]byte(s))
	}
	if fixtures, _ := filepath.Glob("../../cmd/ds01-workloads/testdata/*.json"); len(fixtures) > 0 {
		for _, p := range fixtures {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var v any
		if json.Unmarshal(in, &v) != nil {
			return
		}
		var compact bytes.Buffer
		enc := json.NewEncoder(&compact)
		enc.SetEscapeHTML(false)
		if enc.Encode(v) != nil {
			return
		}
		c := bytes.TrimSuffix(compact.Bytes(), []byte("\n"))
		var want bytes.Buffer
		if err := json.Indent(&want, c, "", "  "); err != nil {
			t.Fatal(err)
		}
		if got := indentCompact(nil, c, "  "); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("indent of %s:\n got %s\nwant %s", c, got, want.Bytes())
		}
	})
}
