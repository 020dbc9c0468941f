package cycle

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/ds01/ds01-detectord/internal/classify"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/source/activity"
	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/proc"
)

var errNoGPUSource = errors.New("no GPU source configured")

// initProc is a container's init process and its real UID.
type initProc struct {
	pid int
	uid uint32
}

// gather asks each source what exists and reads the facts reconcile needs
// about the answers: the UIDs of the containers' init processes, the /proc
// entries of the GPU processes, and the names of every UID involved. It
// also returns how long the Docker source took.
func (s *Scanner) gather(ctx context.Context, full bool) (facts.Scan, time.Duration) {
	var f facts.Scan
	var early <-chan map[string]facts.Activity
	startActivity, listCtx := func() {}, ctx
	if full && s.cfg.Activity != nil {
		// The cgroup reads start when Docker answers the list (its first
		// response byte): read while dockerd was building the list, they
		// slowed it by about as much as they took; after, they share the
		// cores with the list's decoding. A source that made no HTTP call
		// starts them when it returns.
		startActivity, early = s.readActivityEarly()
		listCtx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotFirstResponseByte: startActivity})
	}
	listStart := time.Now()
	f.Docker, f.DockerErr = s.cfg.Docker.List(listCtx, full)
	took := time.Since(listStart)
	startActivity()
	if f.DockerErr == nil {
		f.InitUIDs, f.ProcErr = s.initUIDs(f.Docker.Containers)
	}
	f.GPUErr = errNoGPUSource
	if s.sampler != nil {
		var rep gpu.Report
		f.Samples, rep, f.Procs, f.GPUErr = s.sampler.take(ctx)
		f.GPU, f.GPUDevices = rep.Processes, rep.Devices
	}
	if f.GPUErr == nil {
		f.Inits = s.readInits(f)
		f.ProcErr = cmp.Or(f.ProcErr, procErr(f))
	}
	if early != nil {
		f.Activity = s.readActivity(<-early, f)
	}
	if full && f.GPUErr == nil {
		f.ProcCPU = s.readProcCPU(f)
	}
	f.Users = s.userNames(ctx, f)
	f.Now = s.cfg.Now()
	return f, took
}

// readFailed reports whether a read of p's facts failed for a reason
// other than the process being gone.
func readFailed(p facts.Proc) bool {
	return proc.ReadFailed(p.CgroupErr) || proc.ReadFailed(p.UIDErr) || proc.ReadFailed(p.StartErr)
}

// procErr returns the first /proc read of this cycle's GPU processes and
// init processes that failed for a reason other than the process being
// gone (proc.ReadFailed), or nil.
func procErr(f facts.Scan) error {
	for pid, p := range f.Procs {
		for _, err := range []error{p.CgroupErr, p.UIDErr, p.StartErr} {
			if proc.ReadFailed(err) {
				return fmt.Errorf("pid %d: %w", pid, err)
			}
		}
	}
	for id, in := range f.Inits {
		if proc.ReadFailed(in.CgroupErr) {
			return fmt.Errorf("init process of container %.12s: %w", id, in.CgroupErr)
		}
	}
	return nil
}

// initUIDs reads the real UID of each running container's init process,
// once per container and PID, and forgets the containers no longer listed.
// A read that fails for a reason other than the process being gone keeps
// what was known and is returned as the /proc source's error.
func (s *Scanner) initUIDs(list []*facts.Container) (map[string]uint32, error) {
	var failed error
	out := map[string]uint32{} // running containers only: not sized by the list
	seen := make(map[string]initProc, len(s.inits))
	for _, c := range list {
		if c.Pid <= 0 {
			continue
		}
		p, ok := s.inits[c.ID]
		if !ok || p.pid != c.Pid {
			uid, err := s.cfg.Proc.UID(c.Pid)
			if proc.ReadFailed(err) {
				failed = cmp.Or(failed, fmt.Errorf("init process %d: %w", c.Pid, err))
				if ok { // keep what was known
					seen[c.ID], out[c.ID] = p, p.uid
				}
				continue
			}
			if err != nil {
				continue
			}
			p = initProc{c.Pid, uid}
		}
		seen[c.ID], out[c.ID] = p, p.uid
	}
	s.inits = seen
	return out, failed
}

// readProc reads what attribution needs about one GPU process.
func readProc(fs proc.FS, pid int) facts.Proc {
	var p facts.Proc
	p.Cgroup, p.CgroupErr = fs.Cgroup(pid)
	if p.CgroupErr != nil {
		return p
	}
	p.Argv, p.ArgvErr = fs.Argv(pid)
	p.UID, p.UIDErr = fs.UID(pid)
	p.StartTime, p.StartErr = fs.StartTime(pid)
	p.PidNS, _ = fs.PidNS(pid)
	return p
}

// readInits reads the init process of each container a GPU process's
// cgroup names, to check that the process really runs in it. The init's
// PID comes from this cycle's list, or from the last state while Docker is
// failing.
func (s *Scanner) readInits(f facts.Scan) map[string]facts.Init {
	pids := map[string]int{}
	if f.DockerErr == nil {
		for _, c := range f.Docker.Containers {
			pids[c.ID] = c.Pid
		}
	} else {
		for _, c := range s.reported.Containers {
			pids[c.FullID] = c.Pid
		}
	}
	out := map[string]facts.Init{}
	read := func(p *facts.Proc) {
		for _, c := range p.Cgroup.Chain() { // every container the path names
			id := c.ID
			if _, done := out[id]; done || pids[id] <= 0 {
				continue
			}
			var in facts.Init
			in.Cgroup, in.CgroupErr = s.cfg.Proc.Cgroup(pids[id])
			in.PidNS, _ = s.cfg.Proc.PidNS(pids[id])
			out[id] = in
		}
	}
	for _, p := range f.Procs {
		read(&p)
	}
	for _, smp := range f.Samples { // processes gone since: their containers too
		for _, p := range smp.Facts {
			if p != nil {
				read(p)
			}
		}
	}
	return out
}

// userNames resolves every UID the facts name: GPU processes, init
// processes and container names of the form <x>._.<uid>.
func (s *Scanner) userNames(ctx context.Context, f facts.Scan) map[uint32]string {
	names := map[uint32]string{}
	if s.cfg.Users == nil {
		return names
	}
	lookup := func(uid uint32) {
		if _, done := names[uid]; done {
			return
		}
		if n, ok := s.cfg.Users(ctx, uid); ok {
			names[uid] = n
		}
	}
	for _, uid := range f.InitUIDs {
		lookup(uid)
	}
	for _, p := range f.Procs {
		if p.CgroupErr == nil && p.UIDErr == nil {
			lookup(p.UID)
		}
	}
	seen := map[*facts.Proc]bool{}
	for _, smp := range f.Samples {
		for _, p := range smp.Facts {
			if p != nil && !seen[p] && p.CgroupErr == nil && p.UIDErr == nil {
				seen[p] = true
				lookup(p.UID)
			}
		}
	}
	for _, c := range f.Docker.Containers {
		if uid, ok := classify.NameUID(c.Name); ok {
			lookup(uid)
		}
	}
	for _, c := range f.Docker.Ephemeral {
		if uid, ok := classify.NameUID(c.Name); ok {
			lookup(uid)
		}
	}
	return names
}

// readActivityEarly returns a function that starts (once) reading the
// cgroups and network namespaces of the containers the last
// reconciliation scan found running, beside the rest of the scan, and the
// channel the samples come on. Only reconciliation scans read activity:
// the verdict counts them.
func (s *Scanner) readActivityEarly() (start func(), samples <-chan map[string]facts.Activity) {
	ch := make(chan map[string]facts.Activity, 1)
	last := s.running
	var once sync.Once
	return func() { once.Do(func() { go func() { ch <- s.cfg.Activity.Read(last, s.cfg.Now) }() }) }, ch
}

// readActivity keeps the early samples of the containers that still run
// with the same init process, and reads the rest (started since the last
// reconciliation scan) now. With Docker failing nothing is known.
func (s *Scanner) readActivity(early map[string]facts.Activity, f facts.Scan) map[string]facts.Activity {
	if f.DockerErr != nil {
		return nil
	}
	last := make(map[string]activity.Container, len(s.running))
	for _, c := range s.running {
		last[c.ID] = c
	}
	running := make([]activity.Container, 0, len(s.running)+8)
	var rest []activity.Container
	out := make(map[string]facts.Activity, len(s.running)+8)
	for _, c := range f.Docker.Containers {
		if c.Pid <= 0 {
			continue
		}
		ac := activity.Container{ID: c.ID, Pid: c.Pid, HostNetwork: c.HostNetwork}
		running = append(running, ac)
		if smp, ok := early[c.ID]; ok && last[c.ID] == ac {
			out[c.ID] = smp
		} else {
			rest = append(rest, ac)
		}
	}
	for id, smp := range s.cfg.Activity.Add(rest, s.cfg.Now) {
		out[id] = smp
	}
	s.running = running
	return out
}

// readProcCPU reads the CPU time of every GPU process (host processes get
// their cpu_percent from it).
func (s *Scanner) readProcCPU(f facts.Scan) map[int]facts.ProcCPU {
	out := make(map[int]facts.ProcCPU, len(f.Procs))
	for pid, p := range f.Procs {
		if p.CgroupErr != nil || p.Cgroup.ID != "" {
			continue // gone, or in a container: its cgroup tells
		}
		b, err := os.ReadFile(filepath.Join(s.cfg.Proc.Root, strconv.Itoa(pid), "stat"))
		if err != nil {
			continue
		}
		if ticks, start, ok := activity.ProcessCPU(b); ok {
			out[pid] = facts.ProcCPU{Ticks: ticks, StartTime: start, At: s.cfg.Now()}
		}
	}
	return out
}
