// Package statefile loads and atomically rewrites the state file.
package statefile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ds01/ds01-detectord/internal/asciijson"
	"github.com/ds01/ds01-detectord/internal/safefile"
	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Mode is the state file's permission: world-readable, as the Python scanner's
// state docs/ARCHITECTURE.md documents. GroupMode is used with a group.
const (
	Mode      = 0o644
	GroupMode = 0o640
)

// Load reads the state file at path. A missing file gives an empty state
// and no error. A file that cannot be parsed is renamed to
// <path>.corrupt-<UTC timestamp> and an empty state is returned together with
// an error that says so; the caller logs it and carries on.
func Load(path string) (inventory.State, error) {
	b, err := inventory.ReadBytes(path)
	if errors.Is(err, fs.ErrNotExist) {
		return inventory.Empty(), nil
	}
	if err != nil {
		return inventory.Empty(), fmt.Errorf("read state file: %w", err)
	}
	return parse(path, b)
}

// parse parses the bytes read from path, moving a corrupt file aside.
func parse(path string, b []byte) (inventory.State, error) {
	st, perr := inventory.Parse(b)
	if perr == nil {
		return st, nil
	}
	if errors.Is(perr, inventory.ErrNewerSchema) { // never moved aside: going back must not lose it
		return inventory.Empty(), fmt.Errorf("state file %s: %w", path, perr)
	}
	aside := path + ".corrupt-" + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(path, aside); err != nil {
		return inventory.Empty(), fmt.Errorf("state file %s is corrupt (%v) and could not be moved aside: %w", path, perr, err)
	}
	return inventory.Empty(), fmt.Errorf("state file %s is corrupt (%v); moved to %s, starting fresh", path, perr, aside)
}

// ErrLegacyUnsealed is LoadSealed's seal error for a state file with no
// schema_version: the Python scanner's, which predates sealing.
var ErrLegacyUnsealed = errors.New("the Python scanner's state file, which has no seal")

// LoadSealed is Load that also checks the file's seal with key (none when
// key is nil). The state is returned whatever the seal; sealErr says what
// is wrong with it (seal.ErrUnsealed, seal.ErrBadSeal, ErrLegacyUnsealed),
// and the caller decides whether to trust it. A missing file is an empty
// state with neither error.
func LoadSealed(path string, key *seal.Key) (st inventory.State, sealErr, err error) {
	if key == nil {
		st, err = Load(path)
		return st, nil, err
	}
	b, err := inventory.ReadBytes(path)
	if errors.Is(err, fs.ErrNotExist) {
		return inventory.Empty(), nil, nil
	}
	if err != nil {
		return inventory.Empty(), nil, fmt.Errorf("read state file: %w", err)
	}
	plain, sealErr := key.OpenState(b)
	if sealErr != nil {
		plain = b
		var head struct {
			SchemaVersion *int `json:"schema_version"`
		}
		if json.Unmarshal(b, &head) == nil && head.SchemaVersion == nil {
			sealErr = ErrLegacyUnsealed
		}
	}
	// The bytes checked are the bytes parsed: the file is not read again.
	st, err = parse(path, plain)
	return st, sealErr, err
}

// Encode renders the state as the file's bytes: indent-2 JSON, ASCII only.
func Encode(st inventory.State) ([]byte, error) {
	b, err := asciijson.Marshal(st, "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Encoder writes states as Encode does, byte for byte, but keeps each
// container's encoding and encodes again only the containers that changed
// (inventory.Container.Equal), and streams the file instead of building it
// in memory: a cycle among thousands of unchanged containers then costs
// little more than its changes. One goroutine at a time.
//
// Write keeps the containers map of the state it wrote, to compare the next
// state's with: the caller must not change that map, or the containers in
// it, afterwards (reconcile builds each state afresh). Keeping the map the
// caller keeps anyway, rather than a copy of each container, saves a
// container's worth of memory per container.
type Encoder struct {
	// Key, when set, seals every state written (internal/seal).
	Key  *seal.Key
	prev map[string]inventory.Container // the containers last written
	// last holds, for each of prev, "\n    " + `"<key>": {…}` (indented at
	// the map's depth) + ",": its part of the file as it is written when
	// another container follows it, with its hash for the seal.
	last map[string]*seal.Segment
	keys []string        // last's keys, sorted
	iov  [][]byte        // the pieces of the last write, kept for their capacity
	gs   []*seal.Segment // their segments, kept for their capacity
	// aj and scratch encode a changed container; both are reused.
	aj      asciijson.Encoder
	scratch []byte
}

// containersMarker is where the containers go in the rest of the state,
// encoded with an empty map: no other key of the state is "containers".
var containersMarker = []byte(`"containers": {}`)

// Write writes st to w.
func (e *Encoder) Write(w io.Writer, st inventory.State) (err error) {
	defer func() {
		if err != nil { // start afresh: the cache may be half updated
			e.prev, e.last, e.keys = nil, nil, nil
		}
	}()
	containers := st.Containers
	st.Containers = map[string]inventory.Container{}
	rest, err := asciijson.Marshal(st, "  ")
	if err != nil {
		return err
	}
	at := bytes.Index(rest, containersMarker)
	if at < 0 {
		return errors.New("encode state: no containers key")
	}
	e.sync(containers)
	// The file is a list of pieces, most of them cached encodings: written
	// with writev, they are copied once, by the kernel. iov[first:] starts
	// with the containers, gs[j] being iov[first+j]'s segment (all but the
	// last container: it has no comma after it).
	iov, gs := append(e.iov[:0], rest[:at]), e.gs[:0]
	first := 0
	if len(e.keys) == 0 {
		iov = append(iov, containersMarker)
	} else {
		iov = append(iov, containersOpen)
		first = len(iov)
		for i, k := range e.keys {
			c := containers[k]
			g, ok := e.last[k]
			if p, had := e.prev[k]; !ok || !had || !Equal(&p, &c) {
				b := append(e.scratch[:0], entrySep...)
				if b, err = e.aj.Append(b, k, "", 0); err != nil {
					return err
				}
				b = append(b, ':', ' ')
				if b, err = e.aj.Append(b, c, "  ", 2); err != nil {
					return err
				}
				b = append(b, ',')
				e.scratch = b
				// A right-sized copy: the cache must not pin the scratch buffer.
				seg := seal.NewSegment(bytes.Clone(b))
				g = &seg
				e.last[k] = g
			}
			if b := g.Bytes(); i == len(e.keys)-1 {
				iov = append(iov, b[:len(b)-1])
			} else {
				iov, gs = append(iov, b), append(gs, g)
			}
		}
		iov = append(iov, containersClose)
	}
	e.prev = containers
	iov = append(iov, rest[at+len(containersMarker):], newline)
	if e.Key != nil {
		// The seal: a MAC over the file as written without it, taking each
		// container's kept hash (seal.Segment), put in as its last member.
		s := e.Key.NewStateSealer()
		for i, b := range iov {
			if j := i - first; first > 0 && j >= 0 && j < len(gs) {
				s.WriteSegment(gs[j])
			} else {
				s.Write(b)
			}
		}
		tail := iov[len(iov)-2]
		if !bytes.HasSuffix(tail, closingBrace) {
			return errors.New("encode state: the state does not end in a closing brace")
		}
		iov = append(iov[:len(iov)-2], tail[:len(tail)-len(closingBrace)], s.Member(), closingBrace, newline)
	}
	e.gs = gs[:0]
	defer clear(gs)
	e.iov = iov[:0]
	defer clear(iov) // the pieces must not pin old encodings
	if f, ok := w.(*os.File); ok {
		return writev(f, iov)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	for _, b := range iov {
		bw.Write(b)
	}
	return bw.Flush()
}

var (
	containersOpen  = []byte(`"containers": {`)
	containersClose = []byte("\n  }")
	entrySep        = []byte("\n    ")
	newline         = []byte("\n")
	closingBrace    = []byte("\n}")
)

// writev writes bufs to f in order, IOV_MAX pieces per call, carrying on
// after a short write.
func writev(f *os.File, bufs [][]byte) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for len(bufs) > 0 {
		if len(bufs[0]) == 0 {
			bufs = bufs[1:]
			continue
		}
		var n int
		var werr error
		if err := rc.Write(func(fd uintptr) bool {
			n, werr = unix.Writev(int(fd), bufs[:min(len(bufs), 1024)])
			return werr != unix.EAGAIN
		}); err != nil {
			return err
		}
		switch {
		case werr == unix.EINTR:
			continue
		case werr != nil:
			return &os.PathError{Op: "writev", Path: f.Name(), Err: werr}
		case n == 0:
			return io.ErrShortWrite
		}
		for n > 0 {
			if n < len(bufs[0]) {
				bufs[0] = bufs[0][n:]
				break
			}
			n -= len(bufs[0])
			bufs = bufs[1:]
		}
	}
	return nil
}

// sync makes e.keys the sorted keys of containers and drops the cached
// encodings of containers that are gone. Only the keys that came or went
// are sorted: among thousands of containers where one changed, a write
// sorts one key, not thousands.
func (e *Encoder) sync(containers map[string]inventory.Container) {
	if e.last == nil {
		e.last = make(map[string]*seal.Segment, len(containers))
	}
	var added []string
	for k := range containers {
		if _, ok := e.last[k]; !ok {
			added = append(added, k)
		}
	}
	removed := len(e.keys) + len(added) - len(containers)
	if len(added) == 0 && removed == 0 {
		return
	}
	sort.Strings(added)
	keys := make([]string, 0, len(containers))
	i := 0
	for _, k := range e.keys {
		if _, ok := containers[k]; !ok {
			delete(e.last, k)
			continue
		}
		for i < len(added) && added[i] < k {
			keys = append(keys, added[i])
			i++
		}
		keys = append(keys, k)
	}
	e.keys = append(keys, added[i:]...) // the added are encoded on the way out
}

// Save writes st to path atomically: a temporary file in the same
// directory, fsync, rename over path, fsync of the directory. A reader sees
// the old file or the new one, never a mix. With a group the file is 0640
// and owned by that group; without, 0644.
func Save(path string, st inventory.State, group string) error {
	return SaveWith(nil, path, st, group)
}

// SaveWith is Save through enc, which keeps the containers' encodings
// between calls; nil encodes from scratch.
func SaveWith(enc *Encoder, path string, st inventory.State, group string) error {
	if enc == nil {
		enc = &Encoder{}
	}
	gid, mode := -1, os.FileMode(Mode)
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return fmt.Errorf("state group: %w", err)
		}
		gid, _ = strconv.Atoi(g.Gid)
		mode = GroupMode
	}
	return writeAtomic(path, func(w io.Writer) error { return enc.Write(w, st) }, mode, gid)
}

// WriteAtomic replaces path with data, atomically and durably.
func WriteAtomic(path string, data []byte, mode os.FileMode) error {
	return writeAtomic(path, func(w io.Writer) error { _, err := w.Write(data); return err }, mode, -1)
}

func writeAtomic(path string, write func(io.Writer) error, mode os.FileMode, gid int) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o775); err != nil {
		return err
	}
	// Only a regular file (or nothing) is replaced: something else at the
	// path was put there by someone else, and the admin decides.
	if err := safefile.Lcheck(path); err != nil {
		return err
	}
	// CreateTemp uses O_EXCL, which never follows a planted symlink.
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = write(f); err != nil {
		return err
	}
	if gid >= 0 && fileGid(f) != gid {
		// A setgid directory of that group (the shipped tmpfiles entry)
		// makes this unnecessary; otherwise it takes CAP_CHOWN, or the
		// group among the process's supplementary groups.
		if err = f.Chown(-1, gid); err != nil {
			return fmt.Errorf("cannot give the state file to group %d (make its directory setgid with that group, or add SupplementaryGroups= to the unit): %w", gid, err)
		}
	}
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	d, derr := os.Open(dir)
	if derr != nil {
		return derr
	}
	defer d.Close()
	return d.Sync()
}

func fileGid(f *os.File) int {
	fi, err := f.Stat()
	if err != nil {
		return -1
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Gid)
	}
	return -1
}

// CleanTemps removes temporary files a killed writer left next to path.
func CleanTemps(path string) {
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*"))
	for _, m := range matches {
		os.Remove(m)
	}
}
