// Package facts holds what the sources report, as plain values: the
// containers Docker lists, the processes NVML lists on each GPU, what
// /proc and the cgroups say about them. The gather step (internal/cycle)
// collects them into a Scan, the reconcile step reads them. It imports
// no source: reconcile links neither the Docker client nor NVML.
package facts

import (
	"strconv"
	"time"
)

// Scan is everything the sources reported for one scan: the reconcile
// step's input.
type Scan struct {
	// Now is the time of the cycle: the timestamp of every transition and
	// of last_scan.
	Now time.Time

	// Docker is the container list; DockerErr is set when the Docker source
	// failed, and the containers reported last cycle are then kept.
	Docker    Snapshot
	DockerErr error
	// InitUIDs maps a container's full ID to the real UID of its init
	// process, for the running containers whose UID could be read.
	InitUIDs map[string]uint32

	// GPU is every process NVML listed; GPUErr is set when the GPU source
	// failed (or there is none), and the GPU data of last cycle is kept.
	GPU        []GPUProcess
	GPUDevices []GPUDevice
	GPUErr     error
	// Procs holds the /proc facts of each PID in GPU.
	Procs map[int]Proc
	// ProcErr is set when /proc could not be read for a reason other than
	// a process being gone (EMFILE, EACCES, EIO: proc.ReadFailed). The
	// GPU attribution of the cycle then stands on nothing: the last known
	// GPU use is kept, as while the GPU source fails, and no transition is
	// derived from /proc.
	ProcErr error
	// Samples are the GPU sampler's listings since the last scan, oldest
	// first: the first is the newest of the last scan's batch (accounted up
	// to its time), the last is the one GPU and Procs describe. nil without
	// a sampler: the scans' own lists are then the samples.
	Samples []Sample
	// Inits holds, by full container ID, the /proc facts of the init
	// process of each container a GPU process's cgroup names.
	Inits map[string]Init

	// Activity holds, by full container ID, what the cgroups and network
	// namespaces of the running containers read this scan; nil when they
	// were not read (an event scan: the last reading stands).
	Activity map[string]Activity
	// ProcCPU holds, by PID, the CPU time of each GPU process read this
	// scan (reconciliation scans only; nil otherwise).
	ProcCPU map[int]ProcCPU

	// Users maps UIDs to user names (NSS), for the UIDs above and those
	// container names carry (see classify.NameUID). A UID missing here is
	// shown as its number.
	Users map[uint32]string
}

// Proc is what /proc told about one GPU process. Each fact has its own
// error: a process can exit between two reads.
type Proc struct {
	Cgroup    ContainerRef
	CgroupErr error
	Argv      []string
	ArgvErr   error // why the command line could not be read
	UID       uint32
	UIDErr    error
	StartTime uint64
	StartErr  error
	PidNS     string // "pid:[…]"; "" when it could not be read
	// Started is when the process started (boot time + StartTime); zero
	// when unknown.
	Started time.Time
}

// Init is what /proc told about a container's init process.
type Init struct {
	Cgroup    ContainerRef
	CgroupErr error
	PidNS     string // "" when it could not be read
}

// Sample is one listing of every GPU's processes.
type Sample struct {
	At    time.Time
	Procs []GPUProcess
	// Facts are the /proc facts of each process in Procs (same index),
	// read when the sampler first saw its PID: nil when none could be read.
	Facts []*Proc
	// Gap: the sampler failed before this sample; the interval ending
	// here is credited to nobody.
	Gap bool
	// Unattributed are the processes accounting mode showed that no
	// sample listed; UnattributedFacts their /proc facts when /proc still
	// had the same process (same index), else nil.
	Unattributed      []Unattributed
	UnattributedFacts []*Proc
}

// ProcCPU is one process's CPU time: utime+stime of /proc/<pid>/stat in
// clock ticks, with its start time (field 22) and when it was read.
type ProcCPU struct {
	Ticks, StartTime uint64
	At               time.Time
}

// UserName is the name of uid, or the number when it did not resolve.
func (s Scan) UserName(uid uint32) string {
	if n, ok := s.Users[uid]; ok {
		return n
	}
	return strconv.FormatUint(uint64(uid), 10)
}
