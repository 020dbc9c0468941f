// Package activity is the cgroup and network-namespace source: for a
// running container it reads the CPU time, working-set memory and block
// I/O its cgroup has counted, and the bytes its network namespace's
// interfaces (all but lo) have moved, as cAdvisor does, without Docker's
// stats API. It understands cgroup v1 (cgroupfs driver, /docker/<id>,
// controllers mounted one per directory or co-mounted as cpu,cpuacct) and
// v2 (systemd driver, .../docker-<id>.scope under any slice, nested
// ds01-*.slice parents included), under configurable /proc and cgroup
// roots so that tests can point it at fixture trees.
//
// It reports raw counters with the time they were read; the reconcile step
// turns two of them into rates.
package activity

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ds01/ds01-detectord/internal/facts"
)

// Sample is what was read about one container's init process
// (internal/facts, which the reconcile step reads).
type Sample = facts.Activity

// Reader reads samples. It caches, per container, where its cgroup
// directories are (found once per container and init PID). One goroutine
// at a time calls it; it splits a long list among its workers.
type Reader struct {
	ProcRoot   string // "" : /proc
	CgroupRoot string // "" : /sys/fs/cgroup
	dirs       map[string]dirs
	hostNet    string   // the host's network namespace (the daemon's own), once read
	bufs       [][]byte // one read buffer per worker
}

// perWorker is the fewest containers a worker is started for. A reading
// is five small files, almost all of it system calls; at several hundred
// containers that is tens of milliseconds of one core, which the daemon's
// other cores can share.
const perWorker = 64

// dirs are where one container's counters are, found once per container
// and init PID: the files each scan reads ("" : not there), and whether it
// is in the host's network namespace.
type dirs struct {
	pid                    int
	v2                     bool
	cpu, memUsage, memStat string
	inactiveKey            string // total_inactive_file (v1), inactive_file (v2)
	io, netDev             string // v1 blkio throttle file or v2 io.stat; /proc/<pid>/net/dev
	hostNetwork            bool
	dockerHost             bool // Container.HostNetwork when found
}

// New returns a reader under the given roots ("" for the defaults).
func New(procRoot, cgroupRoot string) *Reader {
	if procRoot == "" {
		procRoot = "/proc"
	}
	if cgroupRoot == "" {
		cgroupRoot = "/sys/fs/cgroup"
	}
	r := &Reader{ProcRoot: procRoot, CgroupRoot: cgroupRoot, dirs: map[string]dirs{}}
	for range min(runtime.GOMAXPROCS(0), 4) {
		r.bufs = append(r.bufs, make([]byte, 16<<10))
	}
	return r
}

// Container is one running container to read: its ID and init PID, and
// whether Docker runs it in the host's network namespace.
type Container struct {
	ID          string
	Pid         int
	HostNetwork bool
}

// Read samples each container, and forgets the cached directories of
// containers not in the list. now stamps each sample; the workers call it
// at once, so it must be safe for concurrent use (time.Now is).
func (r *Reader) Read(list []Container, now func() time.Time) map[string]Sample {
	seen := make(map[string]dirs, len(list))
	out := r.sampleAll(list, now, seen)
	r.dirs = seen
	return out
}

// Add samples each container and keeps every cached directory: for
// containers found after a Read of the others.
func (r *Reader) Add(list []Container, now func() time.Time) map[string]Sample {
	return r.sampleAll(list, now, r.dirs)
}

// sampleAll samples each container, noting its directories in seen. The
// list is cut into one part per worker (the first part read by the
// calling goroutine); the workers only read r.
func (r *Reader) sampleAll(list []Container, now func() time.Time, seen map[string]dirs) map[string]Sample {
	if r.hostNet == "" {
		r.hostNet, _ = os.Readlink(filepath.Join(r.ProcRoot, "self", "ns", "net"))
	}
	type slot struct {
		d  dirs
		s  Sample
		ok bool
	}
	slots := make([]slot, len(list))
	part := func(buf []byte, lo, hi int) {
		for i := lo; i < hi; i++ {
			c := list[i]
			if c.Pid <= 0 {
				continue
			}
			d, ok := r.dirs[c.ID]
			if !ok || d.pid != c.Pid || d.dockerHost != c.HostNetwork {
				var err error
				if d, err = r.locate(c); err != nil {
					continue // the process is gone: nothing known
				}
			}
			slots[i] = slot{d, sample(buf, d, now()), true}
		}
	}
	workers := max(1, min(len(r.bufs), len(list)/perWorker))
	var wg sync.WaitGroup
	for w := 1; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			part(r.bufs[w], w*len(list)/workers, (w+1)*len(list)/workers)
		}()
	}
	part(r.bufs[0], 0, len(list)/workers)
	wg.Wait()
	out := make(map[string]Sample, len(list))
	for i, sl := range slots {
		if sl.ok {
			seen[list[i].ID], out[list[i].ID] = sl.d, sl.s
		}
	}
	return out
}

// locate finds a container's files from /proc/<pid>/cgroup. With v1
// controllers listed (cgroup v1, or hybrid) the v1 directories are used;
// with only the 0:: line, the v2 one.
func (r *Reader) locate(c Container) (dirs, error) {
	proc := filepath.Join(r.ProcRoot, strconv.Itoa(c.Pid))
	b, err := os.ReadFile(filepath.Join(proc, "cgroup"))
	if err != nil {
		return dirs{}, err
	}
	d := dirs{pid: c.Pid, dockerHost: c.HostNetwork}
	var v2path, cpu, mem, io string
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2path = parts[2]
			continue
		}
		for _, ctl := range strings.Split(parts[1], ",") {
			var dst *string
			switch ctl {
			case "cpuacct":
				dst = &cpu
			case "memory":
				dst = &mem
			case "blkio":
				dst = &io
			default:
				continue
			}
			*dst = r.v1Dir(parts[1], ctl, parts[2])
			found = true
		}
	}
	switch {
	case found:
		if cpu != "" {
			d.cpu = filepath.Join(cpu, "cpuacct.usage")
		}
		if mem != "" {
			d.memUsage, d.memStat, d.inactiveKey = filepath.Join(mem, "memory.usage_in_bytes"), filepath.Join(mem, "memory.stat"), "total_inactive_file"
		}
		if io != "" {
			// The throttle counters, which every kernel keeps (the CFQ
			// ones are gone with CFQ), recursive first, as docker stats.
			for _, name := range []string{"blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_service_bytes"} {
				if _, err := os.Stat(filepath.Join(io, name)); err == nil {
					d.io = filepath.Join(io, name)
					break
				}
			}
		}
	case v2path != "":
		dir := r.under(r.CgroupRoot, v2path)
		d.v2, d.cpu = true, filepath.Join(dir, "cpu.stat")
		d.memUsage, d.memStat, d.inactiveKey = filepath.Join(dir, "memory.current"), filepath.Join(dir, "memory.stat"), "inactive_file"
		d.io = filepath.Join(dir, "io.stat")
	default:
		return dirs{}, errors.New("no cgroup")
	}
	// The host's namespace: as Docker says (--network host), or as the
	// namespace links say where they can be read (without CAP_SYS_PTRACE
	// they cannot for processes with capabilities the daemon lacks). A
	// container's init cannot move to another network namespace without
	// CAP_SYS_ADMIN, so this holds for its life.
	ns, _ := os.Readlink(filepath.Join(proc, "ns", "net"))
	d.hostNetwork = c.HostNetwork || (ns != "" && ns == r.hostNet)
	d.netDev = filepath.Join(proc, "net", "dev")
	return d, nil
}

// v1Dir is a v1 controller's directory for path: the hierarchy mounted
// under its controllers' list (cpu,cpuacct) or the controller's own name.
func (r *Reader) v1Dir(list, ctl, path string) string {
	for _, m := range []string{list, ctl} {
		root := filepath.Join(r.CgroupRoot, m)
		if fi, err := os.Stat(root); err == nil && fi.IsDir() {
			return r.under(root, path)
		}
	}
	return ""
}

// under joins a cgroup path (from /proc, which a process cannot forge
// beyond its own delegated tree) to a root, never climbing out of it.
func (r *Reader) under(root, path string) string {
	return filepath.Join(root, filepath.Clean("/"+path))
}

// sample reads one container's counters, through buf.
func sample(buf []byte, d dirs, at time.Time) Sample {
	s := Sample{At: at, Pid: d.pid, HostNetwork: d.hostNetwork}
	if d.cpu != "" {
		if d.v2 {
			if v, ok := keyed(buf, d.cpu, "usage_usec"); ok {
				ns := uint64(v) * 1000
				s.CPUNanos = &ns
			}
		} else if v, ok := number(buf, d.cpu); ok {
			ns := uint64(v)
			s.CPUNanos = &ns
		}
	}
	if d.memUsage != "" {
		s.MemoryBytes = workingSet(buf, d.memUsage, d.memStat, d.inactiveKey)
	}
	if d.io != "" {
		if b, ok := read(buf, d.io); ok {
			var rd, wr int64
			if d.v2 {
				rd, wr = ParseIOStat(b)
			} else {
				rd, wr = ParseBlkio(b)
			}
			s.ReadBytes, s.WriteBytes = &rd, &wr
		}
	}
	if !d.hostNetwork {
		if b, ok := read(buf, d.netDev); ok {
			if rx, tx, ok := ParseNetDev(b); ok {
				s.RxBytes, s.TxBytes = &rx, &tx
			}
		}
	}
	return s
}

// read reads a small file into buf (the slice returned is valid until
// the next read into it). Control files are under a page or two; one
// that fills the buffer is cut, which the parsers treat as its end.
func read(buf []byte, path string) ([]byte, bool) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, false
	}
	defer syscall.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := syscall.Read(fd, buf[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, false
		}
		n += m
		// procfs and cgroupfs (seq_file, kernfs) fill the buffer given
		// until the file ends: a short read is the end. Not asking again
		// saves one system call of four per file, a quarter of the
		// reading's cost.
		if m == 0 || n < len(buf)/2 {
			break
		}
	}
	return buf[:n], true
}

func number(buf []byte, path string) (int64, bool) {
	b, ok := read(buf, path)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	return v, err == nil && v >= 0
}

// keyed finds "key value" in a flat-keyed file (cpu.stat, memory.stat).
func keyed(buf []byte, path, key string) (int64, bool) {
	b, ok := read(buf, path)
	if !ok {
		return 0, false
	}
	return Keyed(b, key)
}

// Keyed finds "key value" in the contents of a flat-keyed file.
func Keyed(b []byte, key string) (int64, bool) {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) > len(key) && string(line[:len(key)]) == key && line[len(key)] == ' ' {
			v, err := strconv.ParseInt(string(bytes.TrimSpace(line[len(key)+1:])), 10, 64)
			return v, err == nil && v >= 0
		}
	}
	return 0, false
}

// workingSet is usage less inactive file pages, as docker stats shows it
// (inactive pages above usage count as none).
func workingSet(buf []byte, usagePath, statPath, inactiveKey string) *int64 {
	usage, ok := number(buf, usagePath)
	if !ok {
		return nil
	}
	if inactive, ok := keyed(buf, statPath, inactiveKey); ok {
		if inactive < usage {
			usage -= inactive
		} else {
			usage = 0
		}
	}
	return &usage
}

// ParseBlkio sums the Read and Write lines ("8:0 Read 4096") of a v1
// io_service_bytes file.
func ParseBlkio(b []byte) (read, write int64) {
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		v, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil || v < 0 {
			continue
		}
		switch f[1] {
		case "Read":
			read = add(read, v)
		case "Write":
			write = add(write, v)
		}
	}
	return read, write
}

// ParseIOStat sums rbytes and wbytes over the devices of a v2 io.stat
// ("8:0 rbytes=1 wbytes=2 rios=…"). An empty file is no I/O.
func ParseIOStat(b []byte) (read, write int64) {
	for _, line := range strings.Split(string(b), "\n") {
		for _, kv := range strings.Fields(line) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				continue
			}
			switch k {
			case "rbytes":
				read = add(read, n)
			case "wbytes":
				write = add(write, n)
			}
		}
	}
	return read, write
}

// ParseNetDev sums received and transmitted bytes over every interface of
// a /proc/<pid>/net/dev but lo. ok is false when the file has no header.
func ParseNetDev(b []byte) (rx, tx int64, ok bool) {
	lines := strings.Split(string(b), "\n")
	if len(lines) < 2 || !strings.Contains(lines[1], "bytes") {
		return 0, 0, false
	}
	for _, line := range lines[2:] {
		name, rest, found := strings.Cut(line, ":")
		if !found || strings.TrimSpace(name) == "lo" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 9 {
			continue
		}
		r, err1 := strconv.ParseInt(f[0], 10, 64)
		t, err2 := strconv.ParseInt(f[8], 10, 64)
		if err1 != nil || err2 != nil || r < 0 || t < 0 {
			continue
		}
		rx, tx = add(rx, r), add(tx, t)
	}
	return rx, tx, true
}

// ProcessCPU reads a process's CPU time (utime + stime, fields 14 and 15
// of /proc/<pid>/stat) in clock ticks, and its start time (field 22), for
// host GPU processes.
func ProcessCPU(b []byte) (ticks, start uint64, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, false
	}
	u, e1 := strconv.ParseUint(f[11], 10, 64)
	s, e2 := strconv.ParseUint(f[12], 10, 64)
	st, e3 := strconv.ParseUint(f[19], 10, 64)
	if e1 != nil || e2 != nil || e3 != nil {
		return 0, 0, false
	}
	return u + s, st, true
}

// add sums two counters ≥ 0, saturating instead of wrapping negative.
func add(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}
