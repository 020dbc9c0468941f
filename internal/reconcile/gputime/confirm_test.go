package gputime

import (
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/reconcile/transition"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func hp(pid int, start uint64) inventory.HostProcess {
	return inventory.HostProcess{Pid: pid, StartTime: start, User: "u", Cmdline: "c"}
}

func types(qs []transition.Transition) []string {
	var out []string
	for _, q := range qs {
		out = append(out, q.EventType)
	}
	return out
}

func TestTransientRule(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	seen := map[string]inventory.HostProcess{"10": hp(10, 100)}

	c, p, ev, _ := ConfirmHosts(seen, nil, nil, t0, Integrated{}, 5*time.Second)
	if len(c) != 0 || len(p) != 1 || len(ev) != 0 || !p["10"].FirstSeen.Equal(t0) {
		t.Fatalf("first sighting: %v %v %v", c, p, ev)
	}
	c, p, ev, _ = ConfirmHosts(seen, c, p, t0.Add(30*time.Second), Integrated{}, 5*time.Second)
	if len(c) != 1 || len(p) != 0 || len(ev) != 1 || ev[0].EventType != event.HostProcessDiscovered || !c["10"].DetectedAt.Equal(t0) {
		t.Fatalf("second sighting: %v %v %v", c, p, types(ev))
	}
	c, p, ev, _ = ConfirmHosts(seen, c, p, t0.Add(60*time.Second), Integrated{}, 5*time.Second)
	if len(c) != 1 || len(ev) != 0 || !c["10"].DetectedAt.Equal(t0) {
		t.Fatalf("third sighting: %v %v", c, types(ev))
	}

	// PID reuse: same PID, other start time → exited plus a new pending.
	reused := map[string]inventory.HostProcess{"10": hp(10, 999)}
	c2, p2, ev, _ := ConfirmHosts(reused, c, p, t0.Add(90*time.Second), Integrated{}, 5*time.Second)
	if len(c2) != 0 || len(p2) != 1 || p2["10"].StartTime != 999 || len(ev) != 1 || ev[0].EventType != event.HostProcessExited {
		t.Fatalf("PID reuse: confirmed %v pending %v events %v", c2, p2, types(ev))
	}
	if d := ev[0].Details.(event.HostProcessExitedDetails); d.StartTime != 100 {
		t.Errorf("exited event names start time %d, want the old process's 100", d.StartTime)
	}

	// Pending with another start time does not promote.
	_, p3, ev, _ := ConfirmHosts(map[string]inventory.HostProcess{"10": hp(10, 5)}, nil, p2, t0, Integrated{}, 5*time.Second)
	if len(ev) != 0 || p3["10"].StartTime != 5 {
		t.Fatalf("pending reuse: %v %v", p3, types(ev))
	}

	// A vanished pending process gets no event of its own: it is
	// returned for its owner's aggregate.
	_, p4, ev, short := ConfirmHosts(nil, nil, p3, t0, Integrated{}, 5*time.Second)
	if len(p4) != 0 || len(ev) != 0 || len(short) != 1 || short[0].Pid != 10 {
		t.Fatalf("vanished pending: %v %v short %v", p4, types(ev), short)
	}
}
