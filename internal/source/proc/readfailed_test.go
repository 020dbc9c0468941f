package proc

import (
	"os"
	"path/filepath"
	"testing"
)

// A process that is gone (ENOENT) is news about the process; a read that
// fails for another reason (here EISDIR, like EMFILE or EIO) is a failure
// of the reader; a file that does not parse is neither.
func TestReadFailed(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "20", "cgroup"), 0o755); err != nil { // read(2) fails with EISDIR
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "20", "stat"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	fs := New(root)
	if _, err := fs.Cgroup(10); err == nil || ReadFailed(err) {
		t.Errorf("a missing process: %v, ReadFailed %v", err, ReadFailed(err))
	}
	if _, err := fs.Cgroup(20); err == nil || !ReadFailed(err) {
		t.Errorf("an unreadable file: %v, ReadFailed %v", err, ReadFailed(err))
	}
	if _, err := fs.StartTime(20); err == nil || ReadFailed(err) {
		t.Errorf("a file that does not parse: %v, ReadFailed %v", err, ReadFailed(err))
	}
	if ReadFailed(nil) {
		t.Error("nil is a failure")
	}
}
