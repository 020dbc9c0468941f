package docker

import (
	"testing"
)

func TestShortImage(t *testing.T) {
	for _, tc := range [][3]string{
		{"ds01/pytorch:latest", "sha256:abc", "ds01/pytorch:latest"},
		{"sha256:0123456789abcdef0123", "", "0123456789ab"},
		{"", "sha256:fedcba9876543210", "fedcba987654"},
		{"", "", "unknown"},
	} {
		if got := shortImage(tc[0], tc[1]); got != tc[2] {
			t.Errorf("shortImage(%q,%q) = %q, want %q", tc[0], tc[1], got, tc[2])
		}
	}
}
