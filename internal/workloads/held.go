package workloads

import (
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"

	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// dockerStatus is a container's status the way docker ps shows it: "Up 3
// days", "Exited (137) 2 hours ago", "Created".
func dockerStatus(c inventory.Container, now time.Time) string {
	since := func(t *inventory.Time) string {
		if t == nil {
			return ""
		}
		return units.HumanDuration(now.Sub(t.Time))
	}
	code := ""
	if c.ExitCode != nil {
		code = " (" + strconv.Itoa(*c.ExitCode) + ")"
	}
	switch c.Status {
	case "running":
		if c.StartedAt != nil {
			return "Up " + since(c.StartedAt)
		}
		return "Up"
	case "paused":
		if c.StartedAt != nil {
			return "Up " + since(c.StartedAt) + " (Paused)"
		}
		return "Paused"
	case "restarting":
		if c.FinishedAt != nil {
			return "Restarting" + code + " " + since(c.FinishedAt) + " ago"
		}
		return "Restarting"
	case "exited":
		if c.FinishedAt != nil {
			return "Exited" + code + " " + since(c.FinishedAt) + " ago"
		}
		return "Exited"
	case "created":
		return "Created"
	case "removing":
		return "Removal In Progress"
	case "dead":
		return "Dead"
	}
	return c.Status
}

// Mem renders MiB in human units, labelled as what they are.
func Mem(mib *int64) string {
	if mib == nil {
		return "-"
	}
	if *mib < 1024 {
		return strconv.FormatInt(*mib, 10) + "MiB"
	}
	return fmt.Sprintf("%.1fGiB", float64(*mib)/1024)
}

func pctCell(v *int) string {
	if v == nil {
		return "-"
	}
	return strconv.Itoa(*v) + "%"
}

// Duration renders seconds compactly: 45s, 12m, 3h12m, 2d4h.
func Duration(s int64) string {
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm", s/60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
}

func idleCell(w Workload) string {
	if w.IdleSeconds == nil {
		return "-"
	}
	return "idle " + Duration(*w.IdleSeconds)
}

// gpusCell shows the GPUs in use, and the grant in brackets where it
// differs: a container using a GPU it was not granted, or granted more
// (or other) GPUs than it uses. GPUs compare by physical index, so a MIG
// slot 3.0 and the instance 3/gi1 are the same GPU.
func gpusCell(w Workload) string {
	inUse := strings.Join(w.GPUsInUse, ",")
	if inUse == "" {
		inUse = "-"
	}
	if w.Kind != workload.KindContainer {
		return inUse
	}
	switch {
	case w.Granted == "" && len(w.GPUsInUse) == 0:
		return "-"
	case w.Granted == "":
		return inUse + " (+none)"
	case w.Granted != "all" && samePhysical(w.GPUsInUse, strings.Split(w.Granted, ",")):
		return inUse
	}
	return inUse + " (+" + w.Granted + ")"
}

// samePhysical reports whether two GPU lists name the same physical GPUs.
func samePhysical(a, b []string) bool {
	set := func(l []string) map[string]bool {
		m := map[string]bool{}
		for _, g := range l {
			if f := strings.FieldsFunc(g, func(r rune) bool { return r == '.' || r == '/' }); len(f) > 0 {
				m[f[0]] = true
			}
		}
		return m
	}
	x, y := set(a), set(b)
	if len(x) != len(y) {
		return false
	}
	for k := range x {
		if !y[k] {
			return false
		}
	}
	return true
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

func ptr64(p *int64) int64 {
	if p == nil {
		return -1
	}
	return *p
}

func ptrInt(p *int) int64 {
	if p == nil {
		return -1
	}
	return int64(*p)
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

// GPUView writes one block per GPU, like nvitop's process panel: the GPU's
// model, memory and utilisation, then the workloads on it, then the memory
// that no listed workload explains.
func GPUView(out io.Writer, st inventory.State, ws []Workload, style Style) {
	type gpuInfo struct {
		index int
		uuid  string
		g     inventory.GPU
		known bool
	}
	var gpus []gpuInfo
	seen := map[int]bool{}
	for uuid, g := range st.GPUs {
		gpus = append(gpus, gpuInfo{g.Index, uuid, g, true})
		seen[g.Index] = true
	}
	// Files without a gpus map: the GPUs the processes name.
	for _, w := range ws {
		for _, l := range w.GPUsInUse {
			idx, err := strconv.Atoi(strings.SplitN(l, "/", 2)[0])
			if err == nil && !seen[idx] {
				seen[idx] = true
				gpus = append(gpus, gpuInfo{index: idx})
			}
		}
	}
	if len(gpus) == 0 {
		fmt.Fprintln(out, "No GPUs known: the GPU source has not answered (see the summary below)")
		return
	}
	sort.Slice(gpus, func(i, j int) bool { return gpus[i].index < gpus[j].index })
	cols := []column{
		{title: "TYPE", value: func(w Workload) string { return w.Type }, color: func(w Workload) string { return typeColor(w.Type) }},
		{title: "USER", max: 24, value: func(w Workload) string { return w.User }},
		{title: "MEM", value: func(w Workload) string { return Mem(w.GPUMemoryMB) }},
		{title: "UTIL", value: func(w Workload) string { return pctCell(w.UtilPercent) }},
		{title: "IDLE", value: idleCell},
		{title: "NAME", max: 48, value: func(w Workload) string { return w.Name }},
	}

	for i, g := range gpus {
		if i > 0 {
			fmt.Fprintln(out)
		}
		head := fmt.Sprintf("GPU %d", g.index)
		if g.known {
			name := g.g.Name
			if name == "" {
				name = "unknown model"
			}
			head += fmt.Sprintf("  %s  mem %s / %s  util %s", clean(name), Mem(g.g.MemoryUsedMB), Mem(g.g.MemoryTotalMB), pctCell(g.g.UtilizationPercent))
			if g.g.MIGMode {
				head += "  MIG"
			}
		}
		fmt.Fprintln(out, style.paint(bold, Fit(head, style.Width)))
		var on []Workload
		var explained int64
		for _, w := range ws {
			if !w.OnGPU(g.index) {
				continue
			}
			// The workload's share of this GPU only.
			var mem *int64
			util := map[int]*int{} // one key: this GPU's sum
			for label, m := range w.gpuMem {
				if label != strconv.Itoa(g.index) && !strings.HasPrefix(label, strconv.Itoa(g.index)+"/") {
					continue
				}
				if m != nil {
					v := ptr64(mem)
					if v < 0 {
						v = 0
					}
					v += *m
					mem = &v
					explained += *m
				}
				workload.AddUtil(util, g.index, w.gpuUtil[label])
			}
			w.GPUMemoryMB, w.UtilPercent = mem, util[g.index]
			on = append(on, w)
		}
		if len(on) == 0 {
			fmt.Fprintln(out, "  no workload")
		} else {
			Table(out, on, cols, style, "  ")
		}
		if g.known && g.g.MemoryUsedMB != nil && *g.g.MemoryUsedMB > explained {
			rest := *g.g.MemoryUsedMB - explained
			fmt.Fprintln(out, style.paint(dim, Fit("  "+Mem(&rest)+" not explained by any listed workload", style.Width)))
		}
	}
}

// FormatRow is what --format templates see: one row, display-ready.
type FormatRow struct {
	ID, FullID, Type, User, Name, Status, Age, GPUs, Granted, GPUMemory string
	GPUMemoryMB                                                         *int64
	Util, Idle                                                          string
	IdleSeconds                                                         *int64
	Image, UserSource                                                   string
	UserConflict                                                        bool
	HeldSeconds, BusySeconds, AllocatedSeconds                          float64
}

// FormatRowOf turns a row into what --format templates see. Every text
// field is escaped as the table escapes its cells (control characters,
// escape sequences, bidi overrides): names, users and images come from
// users, and the template's output goes to an admin's terminal.
func FormatRowOf(w Workload) FormatRow {
	r := formatRowOf(w)
	v := reflect.ValueOf(&r).Elem()
	for i := 0; i < v.NumField(); i++ {
		if f := v.Field(i); f.Kind() == reflect.String {
			f.SetString(clean(f.String()))
		}
	}
	return r
}

func formatRowOf(w Workload) FormatRow {
	return FormatRow{
		ID: w.ID, FullID: w.FullID, Type: w.Type, User: w.User, Name: w.Name, Status: w.StatusText, Age: FormatAge(w.AgeSeconds),
		GPUs: strings.Join(w.GPUsInUse, ","), Granted: w.Granted, GPUMemory: Mem(w.GPUMemoryMB), GPUMemoryMB: w.GPUMemoryMB,
		Util: pctCell(w.UtilPercent), Idle: idleCell(w), IdleSeconds: w.IdleSeconds, Image: w.Image, UserSource: w.UserSource,
		UserConflict: w.UserConflict, HeldSeconds: w.HeldSecs, BusySeconds: w.BusySecs, AllocatedSeconds: w.AllocatedSecs,
	}
}
