package facts

import (
	"strings"
	"time"

	"github.com/ds01/ds01-detectord/internal/textcut"
)

// Container runtimes a cgroup path can name (ContainerRef.Runtime).
const (
	RuntimeDocker     = "docker"
	RuntimePodman     = "podman"
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	// RuntimeUnknown marks a bare 64-hex cgroup directory outside /docker:
	// a container of some runtime (docker with a cgroupfs --cgroup-parent,
	// for one). The caller decides by looking the ID up in Docker.
	RuntimeUnknown = "unknown"
)

// MaxCmdline caps the command lines the detector records, in bytes.
const MaxCmdline = 1024

// Cmdline is a command line as the detector records it: the arguments
// joined with spaces, cut at MaxCmdline bytes on a rune boundary.
func Cmdline(argv []string) string {
	return textcut.Bytes(strings.Join(argv, " "), MaxCmdline)
}

// ContainerRef is the container a process lives in, read from its cgroup.
type ContainerRef struct {
	Runtime string // "" for a host process
	ID      string // full 64-hex ID
	// Hierarchy and Path locate the container's cgroup: the hierarchy ID of
	// the line it was found on, and the path up to and including the
	// container's own directory. Two processes are in the same container's
	// cgroup when both are equal.
	Hierarchy string
	Path      string
	// Full is the whole cgroup path of that line: deeper than Path when the
	// process sits in a cgroup inside the container (a nested container).
	Full string
	// Inner are the containers nested in this one along the path, outer
	// to inner (Runtime, ID and Path set): a container started with
	// --cgroup-parent=/docker/<id>, or docker in docker.
	Inner []ContainerRef
	// UserTree: the container lies inside a user's delegated tree
	// (user@<uid>.service), where that user can create cgroups of any
	// name: the name proves nothing.
	UserTree bool
}

// Chain is the containers the path names, innermost first.
func (r ContainerRef) Chain() []ContainerRef {
	if r.ID == "" {
		return nil
	}
	out := make([]ContainerRef, 0, 1+len(r.Inner))
	for i := len(r.Inner) - 1; i >= 0; i-- {
		in := r.Inner[i]
		in.Hierarchy, in.Full, in.UserTree = r.Hierarchy, r.Full, r.UserTree
		out = append(out, in)
	}
	outer := r
	outer.Inner = nil
	return append(out, outer)
}

// Find returns the container of the chain with the full ID id.
func (r ContainerRef) Find(id string) (ContainerRef, bool) {
	for _, c := range r.Chain() {
		if c.ID == id {
			return c, true
		}
	}
	return ContainerRef{}, false
}

// Activity is what was read about one container's init process: its
// cgroup's counters and its network namespace's (internal/source/activity). A nil
// pointer is unknown (a file missing or unreadable): never 0 for unknown.
type Activity struct {
	At time.Time // when it was read (monotonic reading included)
	// Pid is the init process the sample was read through.
	Pid int
	// CPUNanos is the CPU time its cgroup has used, in nanoseconds.
	CPUNanos *uint64
	// MemoryBytes is the working set as `docker stats` computes it: usage
	// less inactive file pages (v1 total_inactive_file, v2 inactive_file).
	MemoryBytes *int64
	// ReadBytes and WriteBytes are the block I/O the cgroup did.
	ReadBytes, WriteBytes *int64
	// RxBytes and TxBytes total every interface of the network namespace
	// except lo. Unknown for a container in the host's network namespace
	// (its counters would be the host's).
	RxBytes, TxBytes *int64
	// HostNetwork: the container shares the host's network namespace.
	HostNetwork bool
}
