package inventory

import "testing"

func TestGrantedGPUs(t *testing.T) {
	for _, tc := range []struct {
		c    Container
		want int
	}{
		{Container{HasGPU: false, GPUDevices: []string{"0"}}, 0},
		{Container{HasGPU: true}, 8},                                     // --gpus all: no devices named
		{Container{HasGPU: true, GPUDevices: []string{"all"}}, 8},        // NVIDIA_VISIBLE_DEVICES=all
		{Container{HasGPU: true, GPUDevices: []string{"0", "3"}}, 2},     // two GPUs
		{Container{HasGPU: true, GPUDevices: []string{"0.0", "0.1"}}, 2}, // two MIG slots
	} {
		if got := tc.c.GrantedGPUs(8); got != tc.want {
			t.Errorf("%+v: %d, want %d", tc.c, got, tc.want)
		}
	}
}
