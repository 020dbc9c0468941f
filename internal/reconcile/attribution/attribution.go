// Package attribution decides where each GPU process belongs: in the
// Docker container it runs in (checked against the container's init
// process), another runtime's container, a system process left out by
// name, or a host process of its real UID.
package attribution

import (
	"errors"
	"path"
	"strconv"
	"strings"
	"syscall"

	"github.com/ds01/ds01-detectord/internal/classify"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/redact"
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

// Rules are the site's settings attribution follows.
type Rules struct {
	// Excluded are the system process names left out of host processes.
	Excluded []string
	// KeepSecrets turns off the masking of secret-looking arguments in
	// recorded command lines.
	KeepSecrets bool
}

// Attribute sorts the GPU processes NVML reported into containers (added
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
//
// It returns the host processes by PID, the GPU processes of each (one per
// GPU it is on), the other runtimes' processes, the keys of the containers
// given a GPU process, and the count left out by name.
func Attribute(f facts.Scan, containers map[string]inventory.Container, rules Rules) (map[string]inventory.HostProcess, map[string][]facts.GPUProcess, []inventory.GPUProcess, []string, int) {
	host := map[string]inventory.HostProcess{}
	withGPU := map[string]bool{} // containers given a GPU process
	hostUses := map[string][]facts.GPUProcess{}
	other := []inventory.GPUProcess{}
	excludedCount := 0
	for _, p := range f.GPU {
		pf, ok := f.Procs[p.Pid]
		pl := Place(p, pf, ok, f, containers, rules)
		gp := pl.GP
		switch {
		case pl.Container != "":
			c := containers[pl.Container]
			c.GPUProcesses = append(c.GPUProcesses, gp)
			containers[c.ID] = c
			withGPU[c.ID] = true
		case pl.Other:
			other = append(other, gp)
		case pl.Excluded:
			excludedCount++
		case pl.Host != nil:
			key := strconv.Itoa(p.Pid)
			hostUses[key] = append(hostUses[key], p)
			if hp, ok := host[key]; ok { // same process on another GPU
				hp.GPUMemoryMB = AddMem(hp.GPUMemoryMB, p.MemoryMiB)
				host[key] = hp
				continue
			}
			host[key] = *pl.Host
		}
	}
	keys := make([]string, 0, len(withGPU))
	for k := range withGPU {
		keys = append(keys, k)
		c := containers[k]
		var total *int64
		for _, gp := range c.GPUProcesses {
			total = AddMem(total, gp.GPUMemoryMB)
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

// Placement is where one GPU process belongs.
type Placement struct {
	GP        inventory.GPUProcess
	Container string                 // the 12-char key of the Docker container it runs in
	Other     bool                   // another runtime's container, or /proc unreadable
	Excluded  bool                   // a system process left out by name
	Host      *inventory.HostProcess // a host process (nil: none of these; gone)
}

// Place attributes one GPU process (pf: its /proc facts, ok: gathered).
// The scan's own list and every sample of the GPU sampler go through it,
// so a second of GPU time is charged where the process is listed.
func Place(p facts.GPUProcess, pf facts.Proc, ok bool, f facts.Scan, containers map[string]inventory.Container, rules Rules) Placement {
	gp := inventory.GPUProcess{Pid: p.Pid, GPUIndex: p.GPUIndex, GPUUUID: p.GPUUUID, MIG: MIGInfo(p.MIG), GPUMemoryMB: p.MemoryMiB, SMUtilPercent: p.SMUtil}
	if !ok {
		pf.CgroupErr = errNotGathered
	}
	if pf.CgroupErr != nil {
		gp.Runtime, gp.Error = facts.RuntimeUnknown, "cannot read /proc/"+strconv.Itoa(p.Pid)+": "+errText(pf.CgroupErr)
		return Placement{GP: gp, Other: true}
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
				return Placement{GP: gp, Container: c.ID}
			}
			claimed = workload.ShortID(ref.ID) // names a container it does not run in
		case ref.Runtime == facts.RuntimeDocker && f.DockerErr == nil:
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
	cmdline := facts.Cmdline(argv)
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
		return Placement{GP: gp, Other: true}
	}
	if pf.UIDErr == nil && pf.UID < FirstUserUID && claimed == "" && excluded(pf.Argv, rules.Excluded) {
		return Placement{GP: gp, Excluded: true}
	}
	if pf.StartErr != nil {
		return Placement{GP: gp} // gone between the two reads
	}
	return Placement{GP: gp, Host: &inventory.HostProcess{
		Pid: p.Pid, User: user, Cmdline: cmdline, GPUMemoryMB: p.MemoryMiB, GPUUUID: p.GPUUUID,
		UID: pf.UID, StartTime: pf.StartTime, GPUIndex: p.GPUIndex, MIG: MIGInfo(p.MIG),
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

// ProcessOwners flags a container whose GPU processes run as a non-root
// UID other than its user.
func ProcessOwners(f facts.Scan, containers map[string]inventory.Container, withGPU []string) {
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

// MIGInfo is the state's form of a MIG device.
func MIGInfo(m *facts.MIG) *inventory.MIGInfo {
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

// AddMem adds two memory figures, either unknown (nil): the sum of what
// is known, nil when neither is.
func AddMem(a, b *int64) *int64 {
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
