package eventlog

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestAppendCreatesAndAppends(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "events.jsonl")
	l := Log{Path: p}
	if n, err := l.Append([][]byte{[]byte(`{"a":1}`), []byte(`{"b":2}`)}); n != 2 || err != nil {
		t.Fatal(n, err)
	}
	if n, err := l.Append([][]byte{[]byte(`{"c":3}`)}); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	b, _ := os.ReadFile(p)
	if string(b) != "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n" {
		t.Errorf("file: %q", b)
	}
}

func TestAppendFollowsRotation(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.jsonl")
	l := Log{Path: p}
	l.Append([][]byte{[]byte("1")})
	os.Rename(p, p+".1") // logrotate create style
	l.Append([][]byte{[]byte("2")})
	os.Truncate(p, 0) // copytruncate style
	l.Append([][]byte{[]byte("3")})
	a, _ := os.ReadFile(p + ".1")
	b, _ := os.ReadFile(p)
	if string(a) != "1\n" || string(b) != "3\n" {
		t.Errorf("rotated %q current %q", a, b)
	}
}

func TestAppendFailureReportsCount(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.jsonl")
	os.Mkdir(p, 0o755) // a directory where the file should be
	n, err := Log{Path: p}.Append([][]byte{[]byte("x")})
	if n != 0 || err == nil || !strings.Contains(err.Error(), "events.jsonl") {
		t.Fatal(n, err)
	}
}

// The Python scanner's Python tools append the way ds01_events.py does: open in
// append mode, write the line, close. 10k lines from such a writer and 10k
// from ours, at the same time, must come out whole and unmixed.
func TestConcurrentWritersNeverInterleave(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed to play the Python scanner's writers; 'make test' installs it")
	}
	p := filepath.Join(t.TempDir(), "events.jsonl")
	script := `
import json, sys
path = sys.argv[1]
for i in range(10000):
    line = json.dumps({"timestamp": "2026-02-04T10:00:00Z", "event_type": "python.test", "schema_version": "1", "source": "py", "details": {"i": i, "pad": "p" * (i % 700)}}, separators=(",", ":"))
    with open(path, "a") as f:
        f.write(line + "\n")
`
	cmd := exec.Command(py, "-c", script, p)
	var out strings.Builder
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := Log{Path: p}
	for i := 0; i < 10000; i += 10 {
		batch := make([][]byte, 10)
		for j := range batch {
			batch[j] = []byte(fmt.Sprintf(`{"timestamp":"2026-02-04T10:00:00Z","event_type":"go.test","schema_version":"1","source":"go","details":{"i":%d,"pad":"%s"}}`, i+j, strings.Repeat("g", (i+j)%900)))
		}
		if n, err := l.Append(batch); err != nil || n != 10 {
			t.Fatal(n, err)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("python writer: %v %s", err, out.String())
	}
	b, _ := os.ReadFile(p)
	counts := map[string]int{}
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		var m struct {
			Source string `json:"source"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("torn or interleaved line %q: %v", line[:min(len(line), 120)], err)
		}
		counts[m.Source]++
	}
	if counts["py"] != 10000 || counts["go"] != 10000 || len(counts) != 2 {
		t.Fatalf("line counts %v", counts)
	}
}
