// Package safefile opens the daemon's own files in directories that other
// users can write (/var/lib/ds01 and /var/log/ds01 are root:docker 0775).
// It never follows a symlink at the path, never opens a FIFO, device,
// socket or directory there, and never blocks in open: anything but a
// regular file is refused with an error that says what was found.
package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotRegular is wrapped by every refusal.
var ErrNotRegular = errors.New("not a regular file")

// Open opens path with flag (os.O_* values) plus O_NOFOLLOW, O_NONBLOCK
// and O_CLOEXEC, then checks with fstat that it is a regular file. The
// non-blocking mode is cleared again, so reads and writes behave as usual.
func Open(path string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(path, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink: refusing to follow it: %w", path, ErrNotRegular)
		}
		if errors.Is(err, unix.ENXIO) { // a FIFO with no reader, opened for writing
			return nil, fmt.Errorf("%s is a FIFO or device: refusing it: %w", path, ErrNotRegular)
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	if err := CheckRegular(f); err != nil {
		f.Close()
		return nil, err
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CheckRegular fails unless f is a regular file.
func CheckRegular(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is a %s, not a regular file: refusing it: %w", f.Name(), kind(fi.Mode()), ErrNotRegular)
	}
	return nil
}

// Lcheck reports an error when something other than a regular file (or
// nothing) is at path, without following a symlink there.
func Lcheck(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is a %s, not a regular file: refusing to replace it: %w", path, kind(fi.Mode()), ErrNotRegular)
	}
	return nil
}

// ReadAll reads at most max bytes of r; more is an error.
func ReadAll(r io.Reader, name string, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes: refusing to read it", name, max)
	}
	return b, nil
}

func kind(m os.FileMode) string {
	switch {
	case m&os.ModeSymlink != 0:
		return "symlink"
	case m&os.ModeNamedPipe != 0:
		return "FIFO"
	case m&os.ModeSocket != 0:
		return "socket"
	case m&os.ModeDevice != 0:
		return "device"
	case m.IsDir():
		return "directory"
	}
	return "special file"
}
