package view

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/ds01/ds01-detectord/internal/workload"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

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
