package event

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

func line(typ string) string {
	return `{"timestamp":"2026-02-04T10:30:00Z","event_type":"` + typ + `","schema_version":"1"}` + "\n"
}

type got struct {
	types   []string
	errs    []error
	partial []bool
	ends    []int64
}

func readAll(t *testing.T, r Reader) got {
	t.Helper()
	var g got
	for e, err := range r.Events(context.Background()) {
		g.errs = append(g.errs, err)
		g.types = append(g.types, e.EventType)
		g.partial = append(g.partial, e.Pos.Partial)
		g.ends = append(g.ends, e.Pos.End)
	}
	return g
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The archives logrotate names are read oldest first (numbered from the
// highest, then dated), .gz ones decompressed, then the log; other files
// are not read, and a FIFO named like an archive is refused, not waited on.
func TestReaderArchivesInOrder(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "events.jsonl")
	write(t, log, line("log"))
	write(t, log+".1", line("n1"))
	write(t, log+".2", line("n2"))
	write(t, log+"-20260102", line("d2"))
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write([]byte(line("d1")))
	w.Close()
	write(t, log+"-20260101.gz", gz.String())
	write(t, log+"-2020.gz.txt", line("not-an-archive"))
	write(t, log+".old", line("not-an-archive"))
	if err := syscall.Mkfifo(log+".3", 0o644); err != nil {
		t.Fatal(err)
	}
	g := readAll(t, Reader{Path: log, Archives: true})
	if want := []string{"", "n2", "n1", "d1", "d2", "log"}; strings.Join(g.types, ",") != strings.Join(want, ",") {
		t.Fatalf("read %q, want %q", g.types, want)
	}
	if !errors.Is(g.errs[0], ErrNotRegular) || !strings.Contains(g.errs[0].Error(), log+".3") {
		t.Errorf("the FIFO archive: %v", g.errs[0])
	}
	for i, err := range g.errs[1:] {
		if err != nil {
			t.Errorf("line %d: %v", i, err)
		}
	}
	// Without archives: the log only.
	if g := readAll(t, Reader{Path: log}); strings.Join(g.types, ",") != "log" {
		t.Errorf("without archives: %q", g.types)
	}
}

// Each line is an event, a *LineError (not an event, too long), or the
// partial last line; a long line is skipped whole and the next one read.
func TestReaderLines(t *testing.T) {
	log := filepath.Join(t.TempDir(), "events.jsonl")
	long := `{"x":"` + strings.Repeat("a", MaxReadLineBytes) + `"}` + "\n"
	content := line("a") + "not json\n" + long + strings.TrimSuffix(line("crlf"), "\n") + "\r\n" + "\n" + line("b") + strings.TrimSuffix(line("partial"), "\n")
	write(t, log, content)
	g := readAll(t, Reader{Path: log})
	if want := []string{"a", "", "", "crlf", "", "b", "partial"}; strings.Join(g.types, ",") != strings.Join(want, ",") {
		t.Fatalf("read %q, want %q", g.types, want)
	}
	var le *LineError
	if !errors.As(g.errs[1], &le) || le.Pos.Line != 2 {
		t.Errorf("not json: %v", g.errs[1])
	}
	if !errors.Is(g.errs[2], ErrLineTooLong) {
		t.Errorf("long line: %v", g.errs[2])
	}
	if g.errs[4] == nil {
		t.Error("an empty line is not an event")
	}
	for _, i := range []int{0, 3, 5, 6} {
		if g.errs[i] != nil {
			t.Errorf("line %d: %v", i+1, g.errs[i])
		}
	}
	if !g.partial[6] || g.partial[5] {
		t.Errorf("partial: %v", g.partial)
	}
	if g.ends[6] != int64(len(content)) || g.ends[0] != int64(len(line("a"))) {
		t.Errorf("ends: %v (file %d bytes)", g.ends, len(content))
	}
	// From an offset, and the lines starting in the last bytes.
	if g := readAll(t, Reader{Path: log, Offset: g.ends[4]}); strings.Join(g.types, ",") != "b,partial" {
		t.Errorf("from an offset: %q", g.types)
	}
	if g := readAll(t, Reader{Path: log, Tail: int64(len(line("b")) + 10)}); strings.Join(g.types, ",") != "partial" {
		t.Errorf("tail: %q", g.types)
	}
}

// A missing log is fs.ErrNotExist; a FIFO at the log's path is refused at
// once.
func TestReaderRefuses(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "events.jsonl")
	for _, r := range []Reader{{Path: log}, {Path: log, Archives: true}} {
		if g := readAll(t, r); len(g.errs) != 1 || !errors.Is(g.errs[0], fs.ErrNotExist) {
			t.Errorf("missing log (archives %v): %v", r.Archives, g.errs)
		}
	}
	if err := syscall.Mkfifo(log, 0o644); err != nil {
		t.Fatal(err)
	}
	if g := readAll(t, Reader{Path: log}); len(g.errs) != 1 || !errors.Is(g.errs[0], ErrNotRegular) {
		t.Errorf("FIFO: %v", g.errs)
	}
	os.Remove(log)
	os.Symlink(filepath.Join(dir, "elsewhere"), log)
	write(t, filepath.Join(dir, "elsewhere"), line("a"))
	if g := readAll(t, Reader{Path: log}); len(g.errs) != 1 || !errors.Is(g.errs[0], ErrNotRegular) {
		t.Errorf("symlink: %v", g.errs)
	}
}

// Following: appended lines arrive once whole, a copytruncate is read
// from the start, a log renamed away is reopened, and the context ends it.
func TestReaderFollow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := filepath.Join(t.TempDir(), "events.jsonl")
		ctx, cancel := context.WithCancel(t.Context())
		lines := make(chan string, 16)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for e, err := range (Reader{Path: log, Follow: true, Poll: time.Second}).Events(ctx) {
				if err != nil {
					lines <- "error: " + err.Error()
					continue
				}
				lines <- e.EventType
			}
		}()
		next := func(want string) {
			t.Helper()
			time.Sleep(2 * time.Second) // two polls
			synctest.Wait()
			select {
			case got := <-lines:
				if got != want {
					t.Fatalf("got %q, want %q", got, want)
				}
			default:
				t.Fatalf("nothing read, want %q", want)
			}
		}
		appendTo := func(s string) {
			f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(s)
			f.Close()
		}
		appendTo(line("first")) // the log appears
		next("first")
		half := line("second")
		appendTo(half[:10])
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if len(lines) != 0 {
			t.Fatalf("a partial line was yielded: %q", <-lines)
		}
		appendTo(half[10:])
		next("second")
		os.Truncate(log, 0) // copytruncate
		appendTo(line("third"))
		next("third")
		os.Rename(log, log+".1") // create-style rotation
		appendTo(line("fourth"))
		next("fourth")
		cancel()
		<-done
	})
}

// Whatever the log holds, the reader yields its lines in order, each
// ending where the next starts, up to the end of the file; a line is never
// longer than MaxReadLineBytes, and its bytes are the file's.
func FuzzReader(f *testing.F) {
	f.Add([]byte(line("a") + "x\r\n\n" + line("b")))
	f.Add([]byte("no newline at all"))
	f.Add([]byte("\n\n\r\n"))
	f.Add([]byte(strings.Repeat("z", MaxReadLineBytes+3) + "\n" + line("after")))
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(t.TempDir(), "events.jsonl")
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		var end int64
		n := 0
		for e, err := range (Reader{Path: path}).Events(context.Background()) {
			var le *LineError
			if err != nil && !errors.As(err, &le) {
				t.Fatal(err)
			}
			n++
			if e.Pos.Line != n || e.Pos.End <= end || e.Pos.End > int64(len(content)) {
				t.Fatalf("line %d: %+v after end %d", n, e.Pos, end)
			}
			if len(e.Raw) > MaxReadLineBytes || !bytes.HasPrefix(content[end:], e.Raw) {
				t.Fatalf("line %d: raw %q not the file's bytes at %d", n, e.Raw, end)
			}
			if e.Pos.Partial != (e.Pos.End == int64(len(content)) && content[len(content)-1] != '\n') {
				t.Fatalf("line %d: partial %v at end %d of %d", n, e.Pos.Partial, e.Pos.End, len(content))
			}
			end = e.Pos.End
		}
		if end != int64(len(content)) {
			t.Fatalf("read up to %d of %d bytes", end, len(content))
		}
	})
}
