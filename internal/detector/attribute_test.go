package detector

import (
	"strconv"
	"strings"
	"testing"

	"github.com/ds01/ds01-detectord/internal/gpu"
	"github.com/ds01/ds01-detectord/internal/procfs"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func fixtureDetector(keep bool) *Detector {
	return &Detector{cfg: Config{Proc: procfs.New("../procfs/testdata/proc"), KeepSecrets: keep}, excludedNames: DefaultExcluded}
}

func procsFor(pids ...int) []gpu.Process {
	var out []gpu.Process
	for i, p := range pids {
		m := int64(100 * (i + 1))
		out = append(out, gpu.Process{Pid: p, GPUIndex: i % 2, GPUUUID: "GPU-" + strconv.Itoa(i%2), MIGIndex: -1, MemoryMiB: &m})
	}
	return out
}

func TestAttributionOverFixtures(t *testing.T) {
	dockerA := strings.Repeat("a", 64)
	containers := map[string]inventory.Container{
		dockerA[:12]: {ID: dockerA[:12], FullID: dockerA, HasGPU: true, GPUDevices: []string{"1"}, GPUProcesses: []inventory.GPUProcess{}},
	}
	d := fixtureDetector(false)
	// 1002: in docker container aaaa…; 1007: podman; 1020: host with
	// secrets; 1021: vanished between reads; 1022: hostile command line;
	// 1023: nvidia-smi; 99999: no /proc entry at all.
	host, other := d.attribute(procsFor(1002, 1007, 1020, 1021, 1022, 1023, 99999), containers)

	c := containers[dockerA[:12]]
	if len(c.GPUProcesses) != 1 || c.GPUProcesses[0].Pid != 1002 || !c.GPUProcesses[0].OutsideGPUDevices || c.GPUWithoutAccess {
		t.Errorf("container: %+v", c)
	}
	if len(host) != 2 {
		t.Fatalf("host processes: %+v", host)
	}
	secret := host["1020"]
	if secret.Cmdline != "python3 serve.py --token=*** --password *** HF_TOKEN=*** --epochs 3" || secret.UID != 4321 || secret.User != "4321" {
		t.Errorf("redacted host process: %+v", secret)
	}
	if det := hostDiscovered(secret).details.(event.HostProcessDiscoveredDetails); strings.Contains(det.Cmdline, "abc123") || strings.Contains(det.Cmdline, "hunter2") {
		t.Errorf("secret in event: %q", det.Cmdline)
	}
	for _, f := range hostDiscovered(secret).logFields {
		if strings.Contains(f.String, "hunter2") {
			t.Errorf("secret in log field %s", f.Key)
		}
	}
	if evil := host["1022"]; evil.Cmdline != "evil \x1b[31mred line\nbreak \uFFFD" {
		t.Errorf("hostile cmdline kept as data: %q", evil.Cmdline)
	}
	var runtimes []string
	for _, o := range other {
		runtimes = append(runtimes, o.Runtime+":"+strconv.Itoa(o.Pid))
	}
	if strings.Join(runtimes, " ") != "podman:1007 unknown:99999" || other[1].Error == "" {
		t.Errorf("other runtimes: %v %+v", runtimes, other)
	}

	// --keep-secrets records the command line as it is.
	host, _ = fixtureDetector(true).attribute(procsFor(1020), map[string]inventory.Container{})
	if !strings.Contains(host["1020"].Cmdline, "--token=abc123 --password hunter2") {
		t.Errorf("keep-secrets: %q", host["1020"].Cmdline)
	}
}
