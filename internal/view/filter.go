package view

import (
	"sort"
	"strings"
	"time"
)

// Filter selects workloads. All set fields must hold (AND), for containers
// and processes alike.
type Filter struct {
	User    string
	Type    string // an origin, host-process or other-runtime
	GPUOnly bool
	All     bool // include stopped containers and pending processes
	// Idle: only containers idle by the site's rule (the daemon's verdict:
	// GPU when held, CPU, network); IdleFor: idle so for at least this
	// long; OverDeadline: past their idle_deadline.
	Idle         bool
	IdleFor      time.Duration
	OverDeadline bool
	GPU          *int // only workloads with processes on this GPU index
}

// Match reports whether w passes f.
func (f Filter) Match(w Workload) bool {
	if f.User != "" && w.User != f.User {
		return false
	}
	if f.Type != "" && w.Type != f.Type {
		return false
	}
	if f.GPUOnly && !(w.HasGPU || w.GPUMemoryMB != nil) {
		return false
	}
	if !f.All && !w.running {
		return false
	}
	if (f.Idle || f.IdleFor > 0) && w.IdleFor == nil {
		return false
	}
	if f.IdleFor > 0 && time.Duration(*w.IdleFor)*time.Second < f.IdleFor {
		return false
	}
	if f.OverDeadline && !w.overDeadline {
		return false
	}
	if f.GPU != nil && !w.OnGPU(*f.GPU) {
		return false
	}
	return true
}

// Apply returns the workloads that pass f.
func (f Filter) Apply(ws []Workload) []Workload {
	out := []Workload{}
	for _, w := range ws {
		if f.Match(w) {
			out = append(out, w)
		}
	}
	return out
}

// Sort keys.
var sortKeys = map[string]func(a, b Workload) int{
	"mem":  func(a, b Workload) int { return cmpDesc(ptr64(a.GPUMemoryMB), ptr64(b.GPUMemoryMB)) },
	"util": func(a, b Workload) int { return cmpDesc(ptrInt(a.UtilPercent), ptrInt(b.UtilPercent)) },
	"idle": func(a, b Workload) int { return cmpDesc(ptr64(a.IdleSeconds), ptr64(b.IdleSeconds)) },
	"age":  func(a, b Workload) int { return cmpDesc(ptr64(a.AgeSeconds), ptr64(b.AgeSeconds)) },
	"user": func(a, b Workload) int { return strings.Compare(a.User, b.User) },
	"name": func(a, b Workload) int { return strings.Compare(a.Name, b.Name) },
}

// SortKeys lists the --sort values.
func SortKeys() []string { return []string{"mem", "util", "idle", "age", "user", "name"} }

// Sort orders ws by key: mem, util, idle and age largest first (unknown
// last), user and name alphabetically. Ties keep their order.
func Sort(ws []Workload, key string) bool {
	f, ok := sortKeys[key]
	if !ok {
		return false
	}
	sort.SliceStable(ws, func(i, j int) bool { return f(ws[i], ws[j]) < 0 })
	return true
}

func cmpDesc(a, b int64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}
