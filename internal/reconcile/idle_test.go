package reconcile

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/policy"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// sitePolicy is the site's file as shipped, with rita a researcher.
func sitePolicy(t *testing.T) *policy.Policy {
	t.Helper()
	b, err := os.ReadFile("../policy/testdata/resource-limits.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse(b, nil, map[string][]byte{"researcher": []byte("rita\n")}, "resource-limits.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// load is one scan's activity of a container: CPU seconds used and bytes
// moved over the 30 s interval before it.
type load struct {
	cpu     float64 // seconds of CPU in the interval
	net     int64   // bytes in the interval
	gpu     *int    // SM utilisation; nil with gpuHeld false: holds no GPU
	event   bool    // an event scan: nothing read
	unread  bool    // its activity could not be read
	restart bool    // the daemon restarts after this scan
}

type run struct {
	t          *testing.T
	st         inventory.State
	rules      Rules
	c          facts.Container
	gpuHeld    bool
	cpuTotal   float64
	netTotal   int64
	i          int
	all        []Transition
	hostNetwok bool
}

func newRun(t *testing.T, user string, started time.Duration, p *policy.Policy) *run {
	c := ctr(1, "running")
	c.Labels = map[string]string{"ds01.user": user, "ds01.managed": "true"}
	c.StartedAt = t0.Add(-started)
	return &run{t: t, st: inventory.Empty(), rules: Rules{Policy: p}, c: c}
}

// scan runs one scan 30 s after the last and returns its transitions.
func (r *run) scan(l load) []string {
	now := t0.Add(time.Duration(r.i) * 30 * time.Second)
	r.i++
	var procs []gpuProc
	if r.gpuHeld {
		procs = []gpuProc{{pid: 50, ctr: 1, sm: l.gpu, uid: 1001}}
	}
	f := step{containers: []facts.Container{r.c}, procs: procs}.facts(now)
	if !l.event {
		r.cpuTotal += l.cpu
		r.netTotal += l.net
		f.Activity = map[string]facts.Activity{}
		if !l.unread {
			ns := uint64(r.cpuTotal * 1e9)
			mem := int64(64 << 20)
			s := facts.Activity{At: now, Pid: r.c.Pid, CPUNanos: &ns, MemoryBytes: &mem}
			if !r.hostNetwok {
				rx, tx := r.netTotal/2, r.netTotal-r.netTotal/2
				s.RxBytes, s.TxBytes = &rx, &tx
			} else {
				s.HostNetwork = true
			}
			f.Activity[r.c.ID] = s
		}
	}
	res := Reconcile(r.st, f, r.rules)
	r.st = res.State
	r.all = append(r.all, res.Transitions...)
	if l.restart {
		b, err := json.Marshal(r.st)
		if err != nil {
			r.t.Fatal(err)
		}
		if r.st, err = inventory.Parse(b); err != nil {
			r.t.Fatal(err)
		}
	}
	var out []string
	for _, tr := range res.Transitions {
		if tr.EventType == event.Idle || tr.EventType == event.Active {
			out = append(out, strings.TrimPrefix(tr.EventType, "detection."))
		}
	}
	return out
}

func (r *run) ctr() inventory.Container { return r.st.Containers[c1] }

func TestIdleVerdict(t *testing.T) {
	quiet := load{cpu: 0.15, net: 1000} // 0.5 % of a core, 1 kB
	t.Run("researcher: window 4, one idle, one active, deadline idle_since + 1 h", func(t *testing.T) {
		r := newRun(t, "rita", time.Hour, sitePolicy(t))
		// Scan 0 is the first reading (CPU unknown); 1-4 are four quiet
		// scans: idle at 4.
		want := []string{"", "", "", "", "idle", "", "", "", "active", ""}
		loads := []load{quiet, quiet, quiet, quiet, quiet, quiet, quiet, {event: true}, {cpu: 0.1, net: 5 << 20}, quiet}
		for i, l := range loads {
			got := strings.Join(r.scan(l), ",")
			if got != want[i] {
				t.Fatalf("scan %d: %q, want %q (state %+v)", i, got, want[i], r.ctr().IdleSignals)
			}
			c := r.ctr()
			if i == 0 && (c.CPUPercent != nil || c.NetBytesPerInterval != nil || c.MemoryBytes == nil || c.CPUUsageSeconds == nil) {
				t.Errorf("first reading: cpu %v net %v mem %v", c.CPUPercent, c.NetBytesPerInterval, c.MemoryBytes)
			}
			if i == 1 && (c.CPUPercent == nil || *c.CPUPercent != 0.5 || c.NetBytesPerInterval == nil || *c.NetBytesPerInterval != 1000) {
				t.Errorf("rates: cpu %v net %v", c.CPUPercent, c.NetBytesPerInterval)
			}
			if i == 4 {
				at := t0.Add(4 * 30 * time.Second)
				if c.IdleSince == nil || !c.IdleSince.Equal(at) || c.IdleDeadline == nil || !c.IdleDeadline.Equal(at.Add(time.Hour)) || c.IdleScans != 4 {
					t.Errorf("idle since %v deadline %v scans %d", c.IdleSince, c.IdleDeadline, c.IdleScans)
				}
				p := c.IdlePolicy
				if p == nil || p.Group != "researcher" || p.GroupSource != "members-file" || p.IdleDetectionWindow != 4 || *p.IdleTimeoutH != 1 {
					t.Errorf("policy %+v", p)
				}
				s := c.IdleSignals
				if s == nil || s.CPU.Threshold != 3 || !s.CPU.Idle || s.Network.Threshold != 1<<20 || !s.Network.Idle || s.GPU != nil {
					t.Errorf("signals %+v", s)
				}
			}
			if i == 7 && (c.IdleSince == nil || c.CPUPercent == nil || *c.CPUPercent != 0.5) {
				t.Errorf("an event scan dropped the reading: %+v", c)
			}
			if i == 8 && (c.IdleSince != nil || c.IdleDeadline != nil || c.IdleScans != 0 || c.IdleSignals.Network.Idle) {
				t.Errorf("awake: %+v", c)
			}
		}
		for _, tr := range r.all {
			if d, ok := tr.Details.(event.IdleDetails); ok {
				if d.ContainerID != c1 || d.IdleSince == nil || d.Signals == nil || d.Policy == nil || tr.User != "rita" {
					t.Errorf("%s: %+v", tr.EventType, d)
				}
				if tr.EventType == event.Idle && (d.IdleDeadline == nil || d.Signals.Network.Value == nil) {
					t.Errorf("idle without deadline or signals: %+v", d)
				}
			}
		}
	})
	t.Run("a user in no members file: default_group student, window 3, 30 min", func(t *testing.T) {
		r := newRun(t, "nobody", time.Hour, sitePolicy(t))
		var got []string
		for i := 0; i < 6; i++ {
			got = append(got, strings.Join(r.scan(quiet), ","))
		}
		if strings.Join(got, "|") != "|||idle||" {
			t.Fatalf("%q", got)
		}
		c := r.ctr()
		if c.IdlePolicy.Group != "student" || c.IdlePolicy.GroupSource != "default_group" || c.IdleSignals.CPU.Threshold != 2 ||
			!c.IdleDeadline.Equal(c.IdleSince.Add(30*time.Minute)) {
			t.Errorf("policy %+v signals %+v deadline %v", c.IdlePolicy, c.IdleSignals, c.IdleDeadline)
		}
	})
	t.Run("GPU idle but a core spinning: never idle", func(t *testing.T) {
		r := newRun(t, "rita", time.Hour, sitePolicy(t))
		r.gpuHeld = true
		for i := 0; i < 10; i++ {
			if ev := r.scan(load{cpu: 30, gpu: pct(0)}); len(ev) > 0 {
				t.Fatalf("scan %d: %v", i, ev)
			}
		}
		c := r.ctr()
		if c.IdleSignals.GPU == nil || !c.IdleSignals.GPU.Idle || c.IdleSignals.CPU.Idle || *c.CPUPercent != 100 || c.GPUIdleSince == nil {
			t.Errorf("signals %+v cpu %v gpu idle since %v", c.IdleSignals, c.CPUPercent, c.GPUIdleSince)
		}
	})
	t.Run("GPU busy, CPU and network quiet: never idle", func(t *testing.T) {
		r := newRun(t, "rita", time.Hour, sitePolicy(t))
		r.gpuHeld = true
		for i := 0; i < 10; i++ {
			if ev := r.scan(load{cpu: 0.1, gpu: pct(90)}); len(ev) > 0 {
				t.Fatalf("scan %d: %v", i, ev)
			}
		}
	})
	t.Run("within the grace period: scans do not count", func(t *testing.T) {
		r := newRun(t, "nobody", 29*time.Minute, sitePolicy(t)) // grace ends after the 2nd scan
		var got []string
		for i := 0; i < 8; i++ {
			got = append(got, strings.Join(r.scan(quiet), ","))
			if i == 1 && r.ctr().IdleScans != 0 {
				t.Errorf("a scan within grace counted")
			}
		}
		// Scans 0, 1 in grace; 2 past it (counts 1), 3, 4 (3: idle).
		if strings.Join(got, "|") != "||||idle|||" {
			t.Fatalf("%q", got)
		}
	})
	t.Run("unknown keeps the verdict; a daemon restart emits nothing twice", func(t *testing.T) {
		r := newRun(t, "nobody", time.Hour, nil) // flags: window 3, no timeout
		var got []string
		for i, l := range []load{quiet, quiet, {cpu: 0.1, unread: true}, quiet, quiet, {cpu: 0.1, restart: true}, quiet, quiet, {cpu: 20}} {
			got = append(got, strings.Join(r.scan(l), ","))
			if i == 2 && r.ctr().CPUPercent != nil {
				t.Errorf("unread activity shows cpu %v", *r.ctr().CPUPercent)
			}
		}
		if strings.Join(got, "|") != "||||idle||||active" {
			t.Fatalf("%q", got)
		}
		if p := r.ctr().IdlePolicy; p.Source != "flags" || p.IdleTimeoutH != nil || p.TimeoutSource != "none" {
			t.Errorf("policy %+v", p)
		}
	})
	t.Run("host network: the network signal is left out", func(t *testing.T) {
		r := newRun(t, "nobody", time.Hour, nil)
		r.hostNetwok = true
		var got []string
		for i := 0; i < 5; i++ {
			got = append(got, strings.Join(r.scan(quiet), ","))
		}
		c := r.ctr()
		if strings.Join(got, "|") != "|||idle|" || c.NetRxBytes != nil || c.IdleSignals.Network.Value != nil {
			t.Fatalf("%q rx %v", got, c.NetRxBytes)
		}
	})
	t.Run("a devcontainer is exempt: no deadline", func(t *testing.T) {
		r := newRun(t, "rita", time.Hour, sitePolicy(t))
		r.c.Labels = map[string]string{"ds01.user": "rita", "devcontainer.local_folder": "/home/rita/x"}
		for i := 0; i < 6; i++ {
			r.scan(quiet)
		}
		c := r.ctr()
		if c.Origin != inventory.OriginDevcontainer || c.IdleSince == nil || c.IdleDeadline != nil || c.IdlePolicy.IdleTimeoutH != nil ||
			c.IdlePolicy.TimeoutSource != "container_types.devcontainer (null: exempt)" {
			t.Fatalf("origin %s since %v deadline %v policy %+v", c.Origin, c.IdleSince, c.IdleDeadline, c.IdlePolicy)
		}
	})
}

// A host GPU process's cpu_percent comes from its /proc/<pid>/stat ticks
// over the interval between two reconciliation scans; event scans keep it;
// a reused PID (another start time) starts again.
func TestHostProcessCPU(t *testing.T) {
	st := inventory.Empty()
	var pcts []string
	for i, c := range []struct {
		ticks, start uint64
		event        bool
	}{{100, 7, false}, {1600, 7, false}, {0, 7, true}, {2200, 7, false}, {50, 9, false}} {
		now := t0.Add(time.Duration(i) * 30 * time.Second)
		f := step{procs: []gpuProc{{pid: 60, start: c.start}}}.facts(now)
		if !c.event {
			f.ProcCPU = map[int]facts.ProcCPU{60: {Ticks: c.ticks, StartTime: c.start, At: now}}
		}
		st = Reconcile(st, f, Rules{}).State
		p, ok := st.HostProcesses["60"]
		if !ok {
			p, ok = st.PendingProcesses["60"]
		}
		if !ok {
			t.Fatalf("scan %d: no process 60", i)
		}
		pcts = append(pcts, f64s(p.CPUPercent))
	}
	// 1500 ticks = 15 s of CPU in 30 s: 50 %; 600 in 60 s: 10 %.
	if got := strings.Join(pcts, " "); got != "null 50 50 10 null" {
		t.Fatalf("cpu_percent %s", got)
	}
}

func f64s(p *float64) string {
	if p == nil {
		return "null"
	}
	return strconv.FormatFloat(*p, 'f', -1, 64)
}
