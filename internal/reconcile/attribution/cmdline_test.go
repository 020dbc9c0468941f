package attribution

import (
	"errors"
	"io/fs"
	"syscall"
	"testing"
)

// An empty command line says why: the reader of the state (ds01-workloads)
// shows "(unreadable: <reason>)" instead of an empty NAME.
func TestCmdlineError(t *testing.T) {
	for _, c := range []struct {
		cmdline string
		err     error
		want    string
	}{
		{"python train.py", nil, ""},
		{"python train.py", errors.New("ignored"), ""},
		{"", &fs.PathError{Op: "open", Path: "/proc/7/cmdline", Err: syscall.EACCES}, "permission denied"},
		{"", &fs.PathError{Op: "open", Path: "/proc/7/cmdline", Err: syscall.ESRCH}, "no such process"},
		{"", errors.New("odd"), "odd"},
		{"", nil, "empty (a zombie or a kernel thread)"},
	} {
		if got := cmdlineError(c.cmdline, c.err); got != c.want {
			t.Errorf("%q, %v: %q, want %q", c.cmdline, c.err, got, c.want)
		}
	}
}
