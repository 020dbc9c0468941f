package inventory_test

import (
	"fmt"
	"sort"

	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Reading the state file: Parse checks the schema; a file the Python
// scanner wrote (no schema_version) reads as version 1 and is upgraded.
func ExampleParse() {
	st, err := inventory.Parse([]byte(`{
  "last_scan": "2026-02-04T10:30:00.123456Z",
  "containers": {
    "abc123def456": {"id": "abc123def456", "name": "alice-proj._.1001", "origin": "ds01-managed",
      "user": "alice", "has_gpu": true, "gpu_devices": ["1.2"], "status": "running",
      "image": "ds01/pytorch:latest", "detected_at": "2026-02-04T10:00:00Z"}
  },
  "host_processes": {},
  "_pending_processes": {}
}`))
	if err != nil {
		fmt.Println("not a state file:", err)
		return
	}
	ids := make([]string, 0, len(st.Containers))
	for id := range st.Containers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		c := st.Containers[id]
		fmt.Println(c.ID, c.User, c.Origin == inventory.OriginManaged, c.GPUDevices, c.DetectedAt)
	}
	fmt.Println("last scan:", st.LastScan, "schema:", st.SchemaVersion)
	// Output:
	// abc123def456 alice true [1.2] 2026-02-04T10:00:00Z
	// last scan: 2026-02-04T10:30:00.123456Z schema: 2
}

// A file from a newer daemon than the reader knows is refused, not misread.
func ExampleParse_schema() {
	_, err := inventory.Parse([]byte(`{"schema_version": 99, "containers": {}}`))
	fmt.Println(err)
	// Output:
	// unknown schema_version 99 (this build reads 1 to 2): state file written by a newer version
}

// Read takes a path; a missing file is an empty state, not an error.
func ExampleRead() {
	st, err := inventory.Read("/nonexistent/workload-inventory.json")
	fmt.Println(len(st.Containers), err)
	// Output:
	// 0 <nil>
}
