package inventory

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A FIFO planted at the state path is refused at once, without waiting
// for a writer: opening it for reading would block until one comes. So
// are a symlink (to a FIFO, or anywhere) and a directory.
func TestReadRefusesWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.json")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.json")
	os.Symlink(fifo, link)
	sub := filepath.Join(dir, "dir.json")
	os.Mkdir(sub, 0o755)
	for path, what := range map[string]string{fifo: "FIFO", link: "symlink", sub: "directory"} {
		done := make(chan error, 1)
		go func() { _, err := Read(path); done <- err }()
		err := <-done // a hang here fails the test by its timeout
		if err == nil || !strings.Contains(err.Error(), what) {
			t.Errorf("%s: %v, want an error naming a %s", path, err, what)
		}
		if _, err := ReadBytes(path); err == nil {
			t.Errorf("ReadBytes(%s) read it", path)
		}
	}
}

// A missing file is an empty state for Read, fs.ErrNotExist for
// ReadBytes; a file over MaxFileBytes is refused unread.
func TestReadMissingAndLarge(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.json")
	if st, err := Read(missing); err != nil || st.Containers == nil {
		t.Errorf("missing: %v %v", st, err)
	}
	if _, err := ReadBytes(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadBytes of a missing file: %v", err)
	}
	big := filepath.Join(dir, "big.json")
	f, _ := os.Create(big)
	f.Truncate(MaxFileBytes + 1) // sparse
	f.Close()
	if _, err := ReadBytes(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("a file over the cap: %v", err)
	}
	ok := filepath.Join(dir, "ok.json")
	os.WriteFile(ok, []byte(`{"containers":{}}`), 0o644)
	if st, err := Read(ok); err != nil || st.SchemaVersion != SchemaVersion {
		t.Errorf("a state file: %v %v", st, err)
	}
}
