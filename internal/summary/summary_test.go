package summary

import "testing"

// The journal's status line counts in English: "1 host GPU process".
func TestStatusLinePlurals(t *testing.T) {
	for _, c := range []struct {
		s    Summary
		want string
	}{
		{Summary{Containers: 1, HostProcesses: 1, DockerOK: true, GPUOK: true}, "1 container (0 with GPU), 1 host GPU process; docker ok; gpu ok"},
		{Summary{Containers: 0, HostProcesses: 2, DockerOK: true, GPUOK: true}, "0 containers (0 with GPU), 2 host GPU processes; docker ok; gpu ok"},
		{Summary{Containers: 3, GPUContainers: 1, DockerError: "down", GPUError: "no nvml"}, "3 containers (1 with GPU), 0 host GPU processes; docker unavailable: down; gpu unavailable: no nvml"},
	} {
		if got := c.s.StatusLine(); got != c.want {
			t.Errorf("got  %q\nwant %q", got, c.want)
		}
	}
}
