package metrics

import (
	"fmt"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Per-user counters of users with no workload for 24 h leave the
// endpoint; users with a workload keep theirs however long it has been
// since their last GPU-second.
func TestUserSeriesAreBounded(t *testing.T) {
	m := New("test")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	cycle := func(at time.Time, secs map[string]summary.GPUSeconds, users ...string) {
		st := inventory.Empty()
		st.LastScan = inventory.TimePtr(at)
		for i, u := range users {
			id := fmt.Sprintf("%012d", i)
			st.Containers[id] = inventory.Container{ID: id, User: u}
		}
		m.Observe(summary.Summary{State: st, UserGPUSeconds: secs})
	}
	// 500 users that each come once (names from labels), and bob, who
	// keeps a container.
	flood := map[string]summary.GPUSeconds{"bob": {Held: 30}}
	for i := 0; i < 500; i++ {
		flood[fmt.Sprintf("label-user-%d", i)] = summary.GPUSeconds{Held: 1}
	}
	cycle(t0, flood, "bob")
	if n := len(series(scrape(t, m)["ds01_user_gpu_held_seconds_total"])); n != 501 {
		t.Fatalf("%d series after the first cycle", n)
	}
	cycle(t0.Add(23*time.Hour), nil, "bob")
	if n := len(series(scrape(t, m)["ds01_user_gpu_held_seconds_total"])); n != 501 {
		t.Errorf("%d series after 23 h, want all 501 still there", n)
	}
	cycle(t0.Add(24*time.Hour), nil, "bob")
	got := series(scrape(t, m)["ds01_user_gpu_held_seconds_total"])
	if len(got) != 1 || got["user=bob"] != 30 {
		t.Errorf("after 24 h: %v, want bob's alone", got)
	}
	if n := len(series(scrape(t, m)["ds01_user_gpu_busy_seconds_total"])); n > 1 {
		t.Errorf("%d busy series after 24 h", n)
	}
	if len(m.userSeen) != 1 {
		t.Errorf("%d users still tracked", len(m.userSeen))
	}
}
