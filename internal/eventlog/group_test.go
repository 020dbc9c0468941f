//go:build integration

package eventlog

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

func TestCreatedFileIs0664DockerGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("giving the file to the docker group needs root: run 'sudo make test'")
	}
	old := syscall.Umask(0o022) // the usual umask would give 0644
	defer syscall.Umask(old)
	p := filepath.Join(t.TempDir(), "events.jsonl")
	if _, err := (Log{Path: p}).Append([][]byte{[]byte("x")}); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != Mode {
		t.Errorf("mode %v, want %v", fi.Mode().Perm(), os.FileMode(Mode))
	}
	g, err := user.LookupGroup(Group)
	if err != nil {
		t.Fatalf("group %s: %v (docker.io creates it; make test installs docker.io)", Group, err)
	}
	if gid := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Gid)); gid != g.Gid {
		t.Errorf("gid %s, want %s (%s)", gid, g.Gid, Group)
	}
	// An existing file keeps its mode: the admin's choice stands.
	os.Chmod(p, 0o600)
	(Log{Path: p}).Append([][]byte{[]byte("y")})
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("existing file's mode changed to %v", fi.Mode().Perm())
	}
}
