// Package workload holds what the daemon and ds01-workloads both say about
// a workload and must say alike: its kinds, the short form of a container
// ID, and how its processes' GPU utilisation adds up on one GPU.
package workload

// Kinds of workload: the three lists of the state file. The metrics'
// kind label and ds01-workloads' KIND (and TYPE, for processes) use them.
const (
	KindContainer    = "container"     // a Docker container; its ID is the 12-hex-character short ID
	KindHostProcess  = "host-process"  // a GPU process outside any container; its ID is the PID
	KindOtherRuntime = "other-runtime" // a GPU process in a podman, containerd or CRI-O container
)

// ShortID is the 12-character form of a container ID: the state file's key
// for the container, and what docker ps shows.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// AddUtil adds one process's SM utilisation on a GPU, v percent, to
// sums[k], that GPU's sum for one workload. The sum is capped at 100 (two
// processes sharing a GPU's time cannot use more than all of it). nil is
// unknown (MIG, NOT_SUPPORTED), and one unknown process makes the GPU's sum
// unknown for good: sums[k] is then nil.
func AddUtil[K comparable](sums map[K]*int, k K, v *int) {
	cur, seen := sums[k]
	switch {
	case v == nil:
		sums[k] = nil
	case !seen:
		x := min(*v, 100)
		sums[k] = &x
	case cur != nil:
		x := min(*cur+*v, 100)
		sums[k] = &x
	}
}
