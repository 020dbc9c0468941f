package eventlog

import (
	"os"
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
