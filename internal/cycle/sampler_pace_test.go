package cycle

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/ds01/ds01-detectord/internal/source/gpu"
	"github.com/ds01/ds01-detectord/internal/source/gpu/gputest"
	"github.com/ds01/ds01-detectord/internal/source/proc"
)

// pacedNVML is the dgxh100 mock behind gputest's guard, driven by a
// script: the n-th nvmlDeviceGetCount (one per sample) records the
// bubble's clock and sets GPU 0's process list to script[n], or fails.
type pacedNVML struct {
	*gputest.Guard
	srv    *server.Server
	script []paceStep
	at     []time.Time // when each sample called NVML
}

// paceStep is what NVML shows at one sample: the PIDs on GPU 0 (host
// processes of the fixture /proc), or a failing nvmlDeviceGetCount.
type paceStep struct {
	pids []int
	fail bool
}

func (p *pacedNVML) DeviceGetCount() (int, nvml.Return) {
	n := min(len(p.at), len(p.script)-1) // past the script: its last step again
	p.at = append(p.at, time.Now())
	st := p.script[n]
	if st.fail {
		return 0, nvml.ERROR_UNKNOWN
	}
	var list []nvml.ProcessInfo
	for _, pid := range st.pids {
		list = append(list, gputest.Proc(pid, 100))
	}
	gputest.SetProcs(p.srv, 0, list, nil)
	return p.Guard.DeviceGetCount()
}

// The sampler's run loop keeps its pace on the clock: every interval while
// no listed process is young; every max(interval/10, 50 ms) while one is
// younger than --gpu-confirm-after, back to the interval the sample after
// it is confirmed; min(10 intervals, 30 s) after a failed sample (even
// while a process is young), the interval again once NVML answers; and
// onChange exactly after the samples whose set of processes changed (a
// PID appears or goes), at that sample's instant. Each case runs Run in a
// synctest bubble, through the real GPU source over go-nvml's mock and the
// fixture /proc, and compares each sample's instant on the bubble's clock
// with the one the rules give.
func TestSamplerRunPace(t *testing.T) {
	const a, b = 1020, 1022 // host processes in the fixture /proc
	none := paceStep{}
	fail := paceStep{fail: true}
	ab := paceStep{pids: []int{a, b}}
	only := func(pid int) paceStep { return paceStep{pids: []int{pid}} }
	type sample struct {
		step    paceStep
		gap     time.Duration // since the sample before (the first: since Run started)
		changed bool          // onChange is called after it
	}
	cases := []struct {
		name              string
		interval, confirm time.Duration
		samples           []sample
	}{
		{"1s", time.Second, 250 * time.Millisecond, []sample{
			{none, time.Second, false},
			{none, time.Second, false},               // nothing young: the interval
			{only(a), time.Second, true},             // a appears, young
			{only(a), 100 * time.Millisecond, false}, // a is 100 ms old: fast
			{only(a), 100 * time.Millisecond, false}, // 200 ms
			{only(a), 100 * time.Millisecond, false}, // 300 ms: confirmed
			{ab, time.Second, true},                  // back to the interval; b appears
			{ab, 100 * time.Millisecond, false},      // b young: fast
			{fail, 100 * time.Millisecond, false},    // NVML fails while b is young
			{fail, 10 * time.Second, false},          // backed off: 10 intervals
			{ab, 10 * time.Second, false},            // answers again: same set, both confirmed
			{only(b), time.Second, true},             // the interval again; a gone
			{only(b), time.Second, false},
		}},
		{"5s: the back-off stops at 30s", 5 * time.Second, time.Second, []sample{
			{none, 5 * time.Second, false},
			{fail, 5 * time.Second, false},
			{fail, 30 * time.Second, false},          // not 50 s
			{only(a), 30 * time.Second, true},        // young: fast is 500 ms
			{only(a), 500 * time.Millisecond, false}, // 500 ms old
			{only(a), 500 * time.Millisecond, false}, // 1 s old, exactly --gpu-confirm-after: confirmed
			{none, 5 * time.Second, true},            // a gone
			{none, 5 * time.Second, false},
		}},
		{"200ms: fast is at least 50ms", 200 * time.Millisecond, 120 * time.Millisecond, []sample{
			{only(a), 200 * time.Millisecond, true},
			{only(a), 50 * time.Millisecond, false}, // not 20 ms
			{only(a), 50 * time.Millisecond, false},
			{only(a), 50 * time.Millisecond, false}, // 150 ms old: confirmed
			{none, 200 * time.Millisecond, true},
			{fail, 200 * time.Millisecond, false},
			{none, 2 * time.Second, false},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := gputest.H100()
				ok := nvml.SUCCESS
				nv := &pacedNVML{Guard: gputest.NewGuard(t, srv, &ok), srv: srv}
				var want []time.Duration
				var wantChanged []int
				var end time.Duration
				for i, s := range c.samples {
					nv.script = append(nv.script, s.step)
					end += s.gap
					want = append(want, end)
					if s.changed {
						wantChanged = append(wantChanged, i)
					}
				}
				smp := NewSampler(gpu.New(nv, nil), proc.New(filepath.Join("..", "source", "proc", "testdata", "proc")), nil, c.confirm, nil)
				var changed []int         // the sample each onChange followed
				var changedAt []time.Time // and when it was called
				onChange := func() {
					changed = append(changed, len(nv.at)-1)
					changedAt = append(changedAt, time.Now())
				}
				start := time.Now()
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() {
					defer close(done)
					smp.Run(ctx, c.interval, 5*time.Second, onChange)
				}()
				// Past the last sample by less than any pace: a sample
				// too many or too few shows.
				time.Sleep(end + time.Millisecond)
				synctest.Wait()
				cancel()
				<-done

				var got []time.Duration
				for _, at := range nv.at {
					got = append(got, at.Sub(start))
				}
				if !slices.Equal(got, want) {
					t.Errorf("samples at %v,\nwant %v", fmtDurs(got), fmtDurs(want))
				}
				if !slices.Equal(changed, wantChanged) {
					t.Errorf("onChange after samples %v, want %v", changed, wantChanged)
				}
				for i, at := range changedAt {
					if j := changed[i]; j < len(nv.at) && !at.Equal(nv.at[j]) {
						t.Errorf("onChange after sample %d at %v, the sample at %v", j, at.Sub(start), nv.at[j].Sub(start))
					}
				}
			})
		})
	}
}

func fmtDurs(ds []time.Duration) string {
	s := fmt.Sprint(len(ds), " [")
	for i, d := range ds {
		if i > 0 {
			s += " "
		}
		s += d.String()
	}
	return s + "]"
}
