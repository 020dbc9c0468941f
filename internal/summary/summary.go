// Package summary is the neutral description of one finished scan. The
// cycle produces it; the service loop, the logs and the metrics read it,
// without depending on the cycle.
package summary

import (
	"fmt"
	"time"

	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Summary describes one finished cycle.
type Summary struct {
	Containers    int
	GPUContainers int
	HostProcesses int
	PendingEvents int // event lines not yet appended to the log
	DroppedEvents int // lines dropped this cycle: the queue was over its cap
	Excluded      int // system GPU processes left out by name this cycle
	// UserGPUSeconds are this cycle's GPU-seconds held and busy, by user.
	UserGPUSeconds map[string]GPUSeconds
	Events         int            // transitions found this cycle
	EventCounts    map[string]int // this cycle's transitions by event type
	DockerOK       bool
	DockerError    string
	GPUOK          bool
	GPUError       string
	Duration       time.Duration
	Phases         Phases // where Duration went
	State          inventory.State
	StateWriteErr  error
	EventAppendErr error
}

// Phases splits a cycle's wall time: Gather (the sources asked, and
// /proc read), of which Docker is the Docker source's call; Reconcile;
// Deliver (the state file written and the events appended).
type Phases struct{ Gather, Docker, Reconcile, Deliver time.Duration }

// GPUSeconds are GPU-seconds held and busy.
type GPUSeconds struct{ Held, Busy float64 }

// StatusLine is the one-line summary used for logs and sd_notify STATUS=.
func (s Summary) StatusLine() string {
	line := fmt.Sprintf("%s (%d with GPU), %s; docker ", plural(s.Containers, "container", "containers"), s.GPUContainers, plural(s.HostProcesses, "host GPU process", "host GPU processes"))
	if s.DockerOK {
		line += "ok"
	} else {
		line += "unavailable: " + s.DockerError
	}
	if s.GPUOK {
		line += "; gpu ok"
	} else if s.GPUError != "" {
		line += "; gpu unavailable: " + s.GPUError
	}
	return line
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
