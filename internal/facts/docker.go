package facts

import "time"

// Container is what Docker reports about one container: the facts, as
// inspect gives them, that classification needs. It holds no judgement of
// its own (whether a runtime is NVIDIA's, who owns it): that is the
// reconcile step's.
type Container struct {
	ID      string // full 64-hex ID
	Name    string // without the leading slash
	Image   string
	Status  string // State.Status
	Pid     int    // init process on the host; 0 when not running
	Created time.Time
	// StartedAt and FinishedAt are State's (zero when never), ExitCode its
	// last exit code.
	StartedAt, FinishedAt time.Time
	ExitCode              int

	Labels map[string]string // never nil
	Env    []string          // the NVIDIA_* variables of the effective environment
	// Runtime is HostConfig.Runtime, or the daemon's default runtime when
	// that is empty; RuntimePath is its binary as `docker info` lists it.
	Runtime, RuntimePath string
	Privileged           bool
	// HostNetwork: --network host (its network namespace is the host's,
	// and so are the counters there).
	HostNetwork    bool
	DevicePaths    []string // HostConfig.Devices[].PathOnHost
	DeviceRequests []DeviceRequest
	Mounts         []Mount

	// Gone is, for an ephemeral container (Snapshot.Ephemeral), the time
	// of its destroy event; its Status is the last the events told.
	Gone time.Time
}

// DeviceRequest is Docker's HostConfig.DeviceRequests entry (--gpus).
type DeviceRequest struct {
	Driver       string
	Count        int
	DeviceIDs    []string
	Capabilities [][]string
}

// Mount is a container mount as inspect reports it.
type Mount struct {
	Type   string // bind, volume, tmpfs, …
	Source string
}

// Snapshot is one list of the daemon's containers. It is immutable, and
// so is every container it points to: the Docker source shares them with
// its own store and with later snapshots.
type Snapshot struct {
	Containers []*Container
	// Ephemeral are containers created and destroyed between two scans,
	// known only from the event stream. The caller reports them as
	// discovered and exited unless it already knew them.
	Ephemeral []Container
	// Checkpoint is a time such that every event up to it is reflected in
	// this snapshot: the last event handled, held back before any container
	// the stream saw created that this snapshot neither lists nor reports.
	// Zero when the stream has handled no event yet.
	Checkpoint time.Time
	// ListStart is when the list call began.
	ListStart time.Time
	// Incremental: no list call was made; only the containers events named
	// were inspected again (List with full false). Changed holds their
	// IDs: every other container is the very one the previous snapshot
	// reported, with the same facts.
	Incremental bool
	Changed     map[string]bool
}
