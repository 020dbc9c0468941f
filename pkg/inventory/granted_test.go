package inventory

import (
	"slices"
	"testing"
)

// One count everywhere: the host's GPUs for all, each distinct device
// once, unknown devices kept, flagged and counted once.
func TestGrantedGPUs(t *testing.T) {
	host := map[string]GPU{"GPU-a": {Index: 0}, "GPU-b": {Index: 1}, "GPU-c": {Index: 2}}
	for _, tc := range []struct {
		c       Container
		gpus    map[string]GPU
		want    int
		unknown []string
	}{
		{Container{HasGPU: false, GPUDevices: []string{"0"}}, host, 0, nil},
		{Container{HasGPU: true}, host, 3, nil},                                 // --gpus all: no devices named
		{Container{HasGPU: true, GPUDevices: []string{"all"}}, host, 3, nil},    // NVIDIA_VISIBLE_DEVICES=all
		{Container{HasGPU: true, GPUDevices: []string{"0", "2"}}, host, 2, nil}, // two GPUs
		{Container{HasGPU: true, GPUDevices: []string{"0", "0", "0", "0"}}, host, 1, nil},
		{Container{HasGPU: true, GPUDevices: []string{"0,0,0,0"}}, host, 1, nil},    // the Python scanner's comma list
		{Container{HasGPU: true, GPUDevices: []string{"1", "GPU-b"}}, host, 1, nil}, // index and UUID of one GPU
		{Container{HasGPU: true, GPUDevices: []string{"0", "7", "7"}}, host, 2, []string{"7"}},
		{Container{HasGPU: true, GPUDevices: []string{"GPU-zzz"}}, host, 1, []string{"GPU-zzz"}},
		{Container{HasGPU: true, GPUDevices: []string{"0.0", "0.1"}}, host, 2, nil}, // two MIG slots
		{Container{HasGPU: true, GPUDevices: []string{"0", "5"}}, nil, 2, nil},      // no GPUs known: nothing to check
	} {
		if got := tc.c.GrantedGPUs(tc.gpus); got != tc.want {
			t.Errorf("%+v: %d, want %d", tc.c, got, tc.want)
		}
		if _, unknown := CountGranted(tc.c.HasGPU, tc.c.GPUDevices, tc.gpus); !slices.Equal(unknown, tc.unknown) {
			t.Errorf("%+v: unknown %q, want %q", tc.c, unknown, tc.unknown)
		}
	}
}
