package reconcile

import (
	"errors"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ds01/ds01-detectord/internal/classify"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/redact"
	"github.com/ds01/ds01-detectord/internal/source/proc"
	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// DefaultExcluded are the system GPU processes the Python scanner left out
// (docs/COMPAT.md), matched on the basename of argv[0]. A name hides only a
// process of a system account (UID below FirstUserUID): argv[0] is the
// user's to choose (exec -a Xorg).
var DefaultExcluded = []string{"nvidia-persistenced", "nv-hostengine", "dcgm", "dcgmi", "nvidia-smi", "Xorg", "X"}

// FirstUserUID is the first UID of an ordinary user account (Debian's
// FIRST_UID). Processes of lower UIDs (root and system accounts) may be
// left out by name.
const FirstUserUID = 1000

// attribute sorts the GPU processes NVML reported into containers (added
// to containers' gpu_processes), other runtimes and host processes, and
// counts the system processes left out by name.
//
// A process counts for a Docker container only when its cgroup is that
// container's own (the same path as the container's init process's: a
// user can name a scope in their own delegated tree after any container,
// but cannot make one inside a container's) and, where the namespaces can
// be read, it runs in the init's PID namespace. A process whose cgroup
// names a container it does not run in, or one that a healthy Docker does
// not list, is a host process of its real UID, with claimed_container set.
func attribute(f facts.Scan, containers map[string]inventory.Container, rules Rules) (map[string]inventory.HostProcess, map[string][]use, []inventory.GPUProcess, []string, int) {
	host := map[string]inventory.HostProcess{}
	withGPU := map[string]bool{} // containers given a GPU process
	hostUses := map[string][]use{}
	other := []inventory.GPUProcess{}
	excludedCount := 0
	for _, p := range f.GPU {
		pf, ok := f.Procs[p.Pid]
		pl := place(p, pf, ok, f, containers, rules)
		gp := pl.gp
		switch {
		case pl.container != "":
			c := containers[pl.container]
			c.GPUProcesses = append(c.GPUProcesses, gp)
			containers[c.ID] = c
			withGPU[c.ID] = true
		case pl.other:
			other = append(other, gp)
		case pl.excluded:
			excludedCount++
		case pl.host != nil:
			key := strconv.Itoa(p.Pid)
			hostUses[key] = append(hostUses[key], use{p.GPUUUID, p.SMUtil, p.MemoryMiB})
			if hp, ok := host[key]; ok { // same process on another GPU
				hp.GPUMemoryMB = addMem(hp.GPUMemoryMB, p.MemoryMiB)
				host[key] = hp
				continue
			}
			host[key] = *pl.host
		}
	}
	keys := make([]string, 0, len(withGPU))
	for k := range withGPU {
		keys = append(keys, k)
		c := containers[k]
		var total *int64
		for _, gp := range c.GPUProcesses {
			total = addMem(total, gp.GPUMemoryMB)
		}
		if total == nil {
			zero := int64(0)
			total = &zero
		}
		c.GPUMemoryMB = total
		c.GPUWithoutAccess = !c.HasGPU
		containers[k] = c
	}
	return host, hostUses, other, keys, excludedCount
}

// placement is where one GPU process belongs.
type placement struct {
	gp        inventory.GPUProcess
	container string                 // the 12-char key of the Docker container it runs in
	other     bool                   // another runtime's container, or /proc unreadable
	excluded  bool                   // a system process left out by name
	host      *inventory.HostProcess // a host process (nil: none of these; gone)
}

// place attributes one GPU process (pf: its /proc facts, ok: gathered).
// The scan's own list and every sample of the GPU sampler go through it,
// so a second of GPU time is charged where the process is listed.
func place(p facts.GPUProcess, pf facts.Proc, ok bool, f facts.Scan, containers map[string]inventory.Container, rules Rules) placement {
	gp := inventory.GPUProcess{Pid: p.Pid, GPUIndex: p.GPUIndex, GPUUUID: p.GPUUUID, MIG: migInfo(p.MIG), GPUMemoryMB: p.MemoryMiB, SMUtilPercent: p.SMUtil}
	if !ok {
		pf.CgroupErr = errNotGathered
	}
	if pf.CgroupErr != nil {
		gp.Runtime, gp.Error = proc.RuntimeUnknown, "cannot read /proc/"+strconv.Itoa(p.Pid)+": "+errText(pf.CgroupErr)
		return placement{gp: gp, other: true}
	}
	ref := pf.Cgroup
	claimed, claimedRuntime := "", ""
	// The innermost container of the path that Docker lists is the one
	// the process runs in: a container started with
	// --cgroup-parent=/docker/<another's id> is its own, never the
	// other's. Only containers Docker does not list (docker in docker)
	// fall back to an outer one.
	for _, r := range ref.Chain() {
		if c, listed := containers[workload.ShortID(r.ID)]; listed && c.FullID == r.ID {
			ref = r
			break
		}
	}
	if ref.ID != "" {
		c, listed := containers[workload.ShortID(ref.ID)]
		switch {
		case listed && c.FullID == ref.ID:
			own := pf
			own.Cgroup = ref
			if how := inContainer(own, f.Inits[ref.ID]); how != "" {
				gp.Attribution, gp.OutsideGPUDevices = how, outsideDevices(p, c.GPUDevices)
				if pf.UIDErr == nil {
					uid := pf.UID
					gp.UID = &uid
				}
				return placement{gp: gp, container: c.ID}
			}
			claimed = workload.ShortID(ref.ID) // names a container it does not run in
		case ref.Runtime == proc.RuntimeDocker && f.DockerErr == nil:
			claimed = workload.ShortID(ref.ID) // a Docker container Docker does not list
		case ref.UserTree:
			// In a user's delegated tree any name can be had: the
			// process is its user's, whatever runtime the name claims.
			claimed, claimedRuntime = workload.ShortID(ref.ID), ref.Runtime
		default:
			gp.Runtime, gp.ContainerID = ref.Runtime, ref.ID
		}
	}
	argv := pf.Argv
	if !rules.KeepSecrets {
		argv = redact.Args(argv)
	}
	cmdline := proc.JoinCmdline(argv)
	user := classify.Unknown
	if pf.UIDErr == nil {
		user = f.UserName(pf.UID)
	}
	if gp.Runtime != "" { // a container Docker does not know
		gp.Cmdline, gp.User = cmdline, user
		if pf.UIDErr == nil {
			uid := pf.UID
			gp.UID = &uid
		}
		return placement{gp: gp, other: true}
	}
	if pf.UIDErr == nil && pf.UID < FirstUserUID && claimed == "" && excluded(pf.Argv, rules.Excluded) {
		return placement{gp: gp, excluded: true}
	}
	if pf.StartErr != nil {
		return placement{gp: gp} // gone between the two reads
	}
	return placement{gp: gp, host: &inventory.HostProcess{
		Pid: p.Pid, User: user, Cmdline: cmdline, GPUMemoryMB: p.MemoryMiB, GPUUUID: p.GPUUUID,
		UID: pf.UID, StartTime: pf.StartTime, GPUIndex: p.GPUIndex, MIG: migInfo(p.MIG),
		ClaimedContainer: claimed, Runtime: claimedRuntime, CmdlineError: cmdlineError(cmdline, pf.ArgvErr),
	}}
}

// inContainer says how a process whose cgroup names a container was found
// to run in it ("cgroup+pidns", or "cgroup" when a PID namespace could not
// be read), or "" when it does not.
func inContainer(pf facts.Proc, init facts.Init) string {
	if init.CgroupErr != nil || init.Cgroup.ID == "" {
		return "" // no init to compare with: not running, or gone
	}
	if ref, ok := init.Cgroup.Find(pf.Cgroup.ID); ok { // the init's own entry of the chain
		init.Cgroup = ref
	}
	if pf.Cgroup.ID != init.Cgroup.ID || pf.Cgroup.Hierarchy != init.Cgroup.Hierarchy || pf.Cgroup.Path != init.Cgroup.Path {
		return ""
	}
	if pf.PidNS == "" || init.PidNS == "" {
		return "cgroup"
	}
	if pf.PidNS != init.PidNS && pf.Cgroup.Full == pf.Cgroup.Path {
		// In the container's own cgroup but another PID namespace. (A
		// process in a cgroup below the container's, a nested container,
		// has its own namespace and is accepted on the cgroup alone.)
		return ""
	}
	return "cgroup+pidns"
}

// processOwners flags a container whose GPU processes run as a non-root
// UID other than its user.
func processOwners(f facts.Scan, containers map[string]inventory.Container, withGPU []string) {
	for _, k := range withGPU {
		c := containers[k]
		for _, gp := range c.GPUProcesses {
			if gp.UID != nil && *gp.UID != 0 && f.UserName(*gp.UID) != c.User {
				c.UserConflict = true
				containers[k] = c
				break
			}
		}
	}
}

type gatherErr string

func (e gatherErr) Error() string { return string(e) }

const errNotGathered = gatherErr("no /proc facts were gathered")

func migInfo(m *facts.MIG) *inventory.MIGInfo {
	if m == nil {
		return nil
	}
	return &inventory.MIGInfo{UUID: m.UUID, GPUInstanceID: m.GPUInstanceID, ComputeInstanceID: m.ComputeInstanceID}
}

// errText is the last part of an error's text: "no such file or
// directory", not the path that failed.
func errText(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

func addMem(a, b *int64) *int64 {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	v := *a + *b
	return &v
}

func excluded(argv []string, names []string) bool {
	if len(argv) == 0 {
		return false
	}
	name := path.Base(argv[0])
	for _, x := range names {
		if name == x {
			return true
		}
	}
	return false
}

// outsideDevices reports whether process p runs on a GPU the container's
// gpu_devices do not name. Empty gpu_devices (e.g. --gpus all) and "all"
// name every GPU. Entries may be indexes ("1"), slots ("1.2"), or GPU-/MIG-
// UUIDs.
func outsideDevices(p facts.GPUProcess, devices []string) bool {
	if len(devices) == 0 {
		return false
	}
	idx := strconv.Itoa(p.GPUIndex)
	for _, dv := range devices {
		switch {
		case dv == "all", dv == p.GPUUUID, dv == idx:
			return false
		case p.MIG != nil && (dv == p.MIG.UUID || dv == idx+"."+strconv.Itoa(p.MIGIndex)):
			return false
		}
	}
	return true
}

// applyTransientRule confirms a host process once it has been seen for
// confirmAfter: the time between its first and its latest sighting by the
// GPU sampler (or by the scans, without one), never a count of scans.
// Identity is (pid, start time): a reused PID is a new process.
// detected_at is the first sighting. It returns the confirmed and pending
// maps, the transitions, and the processes that ended before they were
// confirmed (their counters complete), which the caller charges to their
// owners in aggregate. in holds the samples' sightings and credits: a
// process that ends between two scans gets the credit of its last samples
// in its exit event.
func applyTransientRule(seen, oldConfirmed, oldPending map[string]inventory.HostProcess, now time.Time, in integrated, confirmAfter time.Duration) (confirmed, pending map[string]inventory.HostProcess, ts []Transition, short []inventory.HostProcess) {
	confirmed, pending = map[string]inventory.HostProcess{}, map[string]inventory.HostProcess{}
	at := in.last
	if at.IsZero() {
		at = now
	}
	for _, k := range sortedKeys(seen) {
		p := seen[k]
		if old, ok := oldConfirmed[k]; ok && old.StartTime == p.StartTime {
			p.DetectedAt, p.FirstSeen = old.DetectedAt, old.FirstSeen
			confirmed[k] = p
			continue
		}
		first := at
		if h := in.hosts[hostKey(p.Pid, p.StartTime)]; h != nil {
			first = h.first
		}
		legacy := false
		if old, ok := oldPending[k]; ok && old.StartTime == p.StartTime {
			if old.FirstSeen != nil && old.FirstSeen.Before(first) {
				first = old.FirstSeen.Time
			}
			// The Python scanner's pending entry (no first sighting
			// recorded): seen at its last scan, and confirmed on this
			// second sighting, as its rule had it.
			legacy = old.FirstSeen == nil
		}
		p.FirstSeen = inventory.TimePtr(first)
		if legacy || at.Sub(first) >= confirmAfter {
			p.DetectedAt = p.FirstSeen
			confirmed[k] = p
			ts = append(ts, hostDiscovered(p))
			continue
		}
		p.DetectedAt = nil
		pending[k] = p
	}
	gone := func(k string, start uint64) bool {
		cur, ok := seen[k]
		return !ok || cur.StartTime != start
	}
	for _, k := range sortedKeys(oldConfirmed) {
		old := oldConfirmed[k]
		if !gone(k, old.StartTime) {
			continue
		}
		if h := in.hosts[hostKey(old.Pid, old.StartTime)]; h != nil {
			old.GPUHeldSeconds += h.held
			old.GPUBusySeconds += h.busy
			old.GPUAllocatedSeconds += h.held
			h.charged, h.ended = true, true
		}
		ts = append(ts, hostExited(old))
	}
	// Processes that ended unconfirmed: those pending at the last scan, and
	// those the sampler saw only between two scans.
	ended := map[string]inventory.HostProcess{}
	for k, old := range oldPending {
		if gone(k, old.StartTime) {
			ended[hostKey(old.Pid, old.StartTime)] = old
		}
	}
	for hk, h := range in.hosts {
		if h.charged {
			continue
		}
		k := strconv.Itoa(h.hp.Pid)
		if _, done := oldConfirmed[k]; done && oldConfirmed[k].StartTime == h.hp.StartTime {
			continue
		}
		if !gone(k, h.hp.StartTime) {
			continue
		}
		p, ok := ended[hk]
		if !ok {
			p = h.hp
			p.FirstSeen = inventory.TimePtr(h.first)
		}
		p.GPUHeldSeconds += h.held
		p.GPUBusySeconds += h.busy
		p.GPUAllocatedSeconds += h.held
		if !slices.Contains(h.gpus, p.GPUUUID) {
			p.GPUUUID = h.gpus[0]
		}
		ended[hk] = p
		if p.FirstSeen != nil && h.last.Sub(p.FirstSeen.Time) >= confirmAfter {
			// Long enough to confirm, but it lived between two scans:
			// reported whole, like a container created and removed
			// between scans.
			p.DetectedAt = p.FirstSeen
			ts = append(ts, hostDiscovered(p), hostExited(p))
			delete(ended, hk)
		}
	}
	for _, hk := range sortedKeys(ended) {
		short = append(short, ended[hk])
	}
	return confirmed, pending, ts, short
}

// cmdlineError says why a command line is empty, in a few words.
func cmdlineError(cmdline string, err error) string {
	var errno syscall.Errno
	switch {
	case cmdline != "":
		return ""
	case errors.As(err, &errno):
		return errno.Error()
	case err != nil:
		return err.Error()
	}
	return "empty (a zombie or a kernel thread)"
}
