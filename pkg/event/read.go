package event

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MaxReadLineBytes is the longest line a Reader reads (16 times what the
// daemon writes); a longer line is not an event: it is skipped, never read
// whole.
const MaxReadLineBytes = 64 << 10

// ErrLineTooLong is the error of a line longer than MaxReadLineBytes.
var ErrLineTooLong = fmt.Errorf("line longer than %d bytes: skipped", MaxReadLineBytes)

// ErrNotRegular is wrapped by the error for a log or archive that is not
// a regular file (a FIFO, a directory, a symlink): /var/log/ds01 is
// writable by the docker group, so anyone there can put one in its place.
var ErrNotRegular = errors.New("not a regular file")

// Position is where a line was read.
type Position struct {
	File string // the log or one of its archives
	Line int    // the line's number in File, from 1
	// End is the offset in File just past the line and its newline (in
	// the uncompressed bytes of an archive).
	End int64
	// Partial: the file ends in this line, without its newline (a write
	// in progress, or a writer that crashed).
	Partial bool
}

// LineError is the error yielded for a line that is not an event: one
// that does not decode, or that is longer than MaxReadLineBytes
// (ErrLineTooLong).
type LineError struct {
	Pos Position
	Err error
}

func (e *LineError) Error() string {
	return fmt.Sprintf("%s line %d: %v", e.Pos.File, e.Pos.Line, e.Err)
}
func (e *LineError) Unwrap() error { return e.Err }

// Reader reads the event log: the one reader of the file, used by the
// daemon's start-up recovery, by ds01-workloads (report, events, events
// --follow, verify) and by the tests.
type Reader struct {
	Path string
	// Archives: read the log's rotated archives first (ArchiveNames,
	// oldest first; .gz ones decompressed), then the log.
	Archives bool
	// Offset is where to start in the log (not in the archives): the End
	// of a line read before.
	Offset int64
	// Tail, when more than 0, reads only the lines that start in the last
	// Tail bytes of the log.
	Tail int64
	// Follow: at the end of the log, wait for lines appended to it (every
	// Poll; default 500 ms) until the context ends, following logrotate: a
	// truncated log is read again from its start, and a log renamed away
	// is reopened. A partial last line waits for its newline; a missing or
	// refused log is waited for.
	Follow bool
	Poll   time.Duration
	// Undecoded: yield each line's Raw and Pos only, not decoded, and no
	// error for a line that is not an event (the daemon's start-up
	// recovery compares bytes, and decoding would cost it more than the
	// read).
	Undecoded bool
}

// Events yields every line of the log, in order, as an Envelope (Decode)
// with its Raw bytes and Pos, and a nil error. A line that is not an
// event yields a *LineError, and its Envelope has only Raw (nil for a line
// too long) and Pos. One trailing carriage return is dropped from each
// line. A file that cannot be read yields its error, Envelope.Pos.File
// naming it, and the reader goes on with the next file: errors.Is(err,
// ErrNotRegular) for anything but a regular file, fs.ErrNotExist for a
// missing log (read with its archives: only when there are none either).
func (r Reader) Events(ctx context.Context) iter.Seq2[Envelope, error] {
	return func(yield func(Envelope, error) bool) {
		if r.Archives {
			archives, err := ArchiveNames(r.Path)
			if err != nil {
				yield(Envelope{Pos: Position{File: r.Path}}, err)
				return
			}
			if _, err := os.Lstat(r.Path); errors.Is(err, fs.ErrNotExist) && len(archives) == 0 && !r.Follow {
				yield(Envelope{Pos: Position{File: r.Path}}, noLogError{r.Path})
				return
			}
			for _, path := range archives {
				if !r.readArchive(ctx, path, yield) {
					return
				}
			}
		}
		r.readLog(ctx, yield)
	}
}

// noLogError is the error for a log missing with all its archives.
type noLogError struct{ path string }

func (e noLogError) Error() string {
	return fmt.Sprintf("no event log at %s (nor archives %s-YYYYMMDD[.gz] or %s.N[.gz])", e.path, e.path, e.path)
}
func (e noLogError) Is(target error) bool { return target == fs.ErrNotExist }

// NotRegularError is the error for a log or an archive that is not a
// regular file; it wraps ErrNotRegular.
type NotRegularError struct {
	Path string
	Type fs.FileMode // what it is: fs.ModeNamedPipe, fs.ModeDir, fs.ModeSymlink, ...
}

func (e *NotRegularError) Error() string {
	return fmt.Sprintf("%s is not a regular file (%s)", e.Path, e.Type)
}
func (e *NotRegularError) Unwrap() error { return ErrNotRegular }

// openRegular opens path for reading without following a symlink or
// blocking on a FIFO, and only when it is a regular file.
func openRegular(path string) (*os.File, error) {
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, &NotRegularError{path, fi.Mode().Type()}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, &NotRegularError{path, fs.ModeSymlink}
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = &NotRegularError{path, fi.Mode().Type()}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// readArchive yields the lines of one archive; false: the consumer stopped.
func (r Reader) readArchive(ctx context.Context, path string, yield func(Envelope, error) bool) bool {
	f, err := openRegular(path)
	if err != nil {
		return yield(Envelope{Pos: Position{File: path}}, err)
	}
	defer f.Close()
	var in io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return yield(Envelope{Pos: Position{File: path}}, fmt.Errorf("%s: %w", path, err))
		}
		defer gz.Close()
		in = gz
	}
	s := newScanner(path, in, 0)
	s.undecoded = r.Undecoded
	for {
		e, err, ok := s.next(false)
		if !ok {
			if s.err != nil {
				return yield(Envelope{Pos: Position{File: path}}, fmt.Errorf("%s: %w", path, s.err))
			}
			return true
		}
		if ctx.Err() != nil || !yield(e, err) {
			return false
		}
	}
}

// readLog yields the lines of the log, from Offset or the last Tail bytes,
// and with Follow those appended to it later.
func (r Reader) readLog(ctx context.Context, yield func(Envelope, error) bool) {
	poll := r.Poll
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	offset := r.Offset
	var f *os.File
	var s *scanner
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for {
		if f == nil {
			h, err := openRegular(r.Path)
			switch {
			case err == nil:
				f = h
				start, err := startAt(f, offset, r.Tail)
				if err != nil {
					start = 0
				}
				s = newScanner(r.Path, f, start)
				s.undecoded = r.Undecoded
			case r.Follow:
			case errors.Is(err, fs.ErrNotExist) && r.Archives:
				return
			default:
				yield(Envelope{Pos: Position{File: r.Path}}, err)
				return
			}
		}
		if f != nil {
			if fi, err := f.Stat(); r.Follow && err == nil && fi.Size() < s.off { // copytruncate
				f.Seek(0, io.SeekStart)
				s = newScanner(r.Path, f, 0)
				s.undecoded = r.Undecoded
			}
			for {
				e, err, ok := s.next(r.Follow)
				if !ok {
					break
				}
				if ctx.Err() != nil || !yield(e, err) {
					return
				}
			}
			if !r.Follow {
				if s.err != nil {
					yield(Envelope{Pos: Position{File: r.Path}}, fmt.Errorf("%s: %w", r.Path, s.err))
				}
				return
			}
			if fi, err := os.Lstat(r.Path); err != nil || !os.SameFile(fi, statOf(f)) { // renamed away: reopen
				f.Close()
				f, offset = nil, 0
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(poll):
		}
	}
}

func statOf(f *os.File) os.FileInfo {
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	return fi
}

// startAt seeks f to where reading starts: offset, or with tail the first
// line that starts in the last tail bytes. It returns that offset.
func startAt(f *os.File, offset, tail int64) (int64, error) {
	if tail > 0 {
		fi, err := f.Stat()
		if err != nil {
			return 0, err
		}
		offset = max(0, fi.Size()-tail)
		if offset > 0 {
			// Start after the first newline at or past offset-1: the
			// line running into the window is not whole.
			buf := make([]byte, 4096)
			for at := offset - 1; ; {
				n, err := f.ReadAt(buf, at)
				if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
					offset = at + int64(i) + 1
					break
				}
				if err != nil {
					offset = fi.Size()
					break
				}
				at += int64(n)
			}
		}
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return 0, err
	}
	return offset, nil
}

// scanner splits a file into lines. A line longer than MaxReadLineBytes
// is skipped, not read whole. At the end of the file, a line without its
// newline is kept for when the file grows (following), or yielded as
// partial.
type scanner struct {
	path string
	br   *bufio.Reader
	cur  []byte // the line read so far
	long bool   // cur's line is too long: its bytes are dropped
	off  int64  // bytes read
	line int    // lines yielded
	err  error  // a read error that ended the file

	undecoded bool // Reader.Undecoded
}

func newScanner(path string, r io.Reader, off int64) *scanner {
	return &scanner{path: path, br: bufio.NewReaderSize(r, 64<<10), off: off}
}

// next returns the next line; ok is false at the end of the file (s.err
// says whether it was an error). following keeps a partial last line for
// later instead of returning it.
func (s *scanner) next(following bool) (e Envelope, err error, ok bool) {
	for {
		b, rerr := s.br.ReadSlice('\n')
		s.off += int64(len(b))
		if !s.long {
			if len(s.cur)+len(b) > MaxReadLineBytes+1 { // +1: the newline
				s.long, s.cur = true, nil
			} else {
				s.cur = append(s.cur, b...)
			}
		}
		switch {
		case rerr == nil:
			e, err = s.emit(false)
			return e, err, true
		case errors.Is(rerr, bufio.ErrBufferFull):
			continue
		case rerr == io.EOF:
			if (len(s.cur) == 0 && !s.long) || following {
				return Envelope{}, nil, false
			}
			e, err = s.emit(true)
			return e, err, true
		default:
			s.err = rerr
			return Envelope{}, nil, false
		}
	}
}

// emit turns the line read into what Events yields.
func (s *scanner) emit(partial bool) (Envelope, error) {
	s.line++
	pos := Position{File: s.path, Line: s.line, End: s.off, Partial: partial}
	raw, long := s.cur, s.long
	s.cur, s.long = nil, false
	if long {
		return Envelope{Pos: pos}, &LineError{pos, ErrLineTooLong}
	}
	raw = bytes.TrimSuffix(bytes.TrimSuffix(raw, []byte("\n")), []byte("\r"))
	if s.undecoded {
		return Envelope{Raw: raw, Pos: pos}, nil
	}
	e, err := Decode(raw)
	if err != nil {
		return Envelope{Raw: raw, Pos: pos}, &LineError{pos, err}
	}
	e.Raw, e.Pos = raw, pos
	return e, nil
}

// Archive names logrotate gives an event log: with dateext (the default
// date format) and without, compressed or not. Other files beside the log
// are not read: the directory is writable by the docker group.
var (
	dateArchive = regexp.MustCompile(`^-([0-9]{8})(\.gz)?$`)
	numArchive  = regexp.MustCompile(`^\.([0-9]{1,6})(\.gz)?$`)
)

// ArchiveNames returns the rotated archives of the event log at path that
// are named as logrotate names them (events.jsonl-YYYYMMDD[.gz],
// events.jsonl.N[.gz]), oldest first: the numbered ones from the highest
// number, then the dated ones by date.
func ArchiveNames(path string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	base := filepath.Base(path)
	type archive struct {
		name string
		num  int
	}
	var dated, numbered []archive
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), base)
		if !ok {
			continue
		}
		if m := dateArchive.FindStringSubmatch(rest); m != nil {
			dated = append(dated, archive{e.Name(), 0})
		} else if m := numArchive.FindStringSubmatch(rest); m != nil {
			n, _ := strconv.Atoi(m[1])
			numbered = append(numbered, archive{e.Name(), n})
		}
	}
	sort.Slice(numbered, func(i, j int) bool { return numbered[i].num > numbered[j].num })
	sort.Slice(dated, func(i, j int) bool { return dated[i].name < dated[j].name })
	var out []string
	for _, a := range append(numbered, dated...) {
		out = append(out, filepath.Join(filepath.Dir(path), a.name))
	}
	return out, nil
}
