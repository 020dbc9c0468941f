package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/ds01/ds01-detectord/internal/view"
	"github.com/ds01/ds01-detectord/internal/workload"
)

// LiveStats asks Docker for CPU% and memory of the running containers among
// ws, all at once (concurrently, under one deadline), rather than one
// command per row. A container whose stats fail shows "-".
func LiveStats(ctx context.Context, cli *client.Client, ws []view.Workload, timeout time.Duration) map[string]view.Stats {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := map[string]view.Stats{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, w := range ws {
		if w.Kind != workload.KindContainer || !w.Running() {
			continue
		}
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			resp, err := cli.ContainerStats(ctx, id, false)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			var s container.StatsResponse
			if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
				return
			}
			mu.Lock()
			out[id] = view.Stats{CPU: cpuPercent(s), Mem: view.HumanBytes(memUsage(s))}
			mu.Unlock()
		}(w.ID)
	}
	wg.Wait()
	return out
}

// cpuPercent is docker stats' formula.
func cpuPercent(s container.StatsResponse) string {
	cpuDelta := float64(s.CPUStats.CPUUsage.TotalUsage) - float64(s.PreCPUStats.CPUUsage.TotalUsage)
	sysDelta := float64(s.CPUStats.SystemUsage) - float64(s.PreCPUStats.SystemUsage)
	cpus := float64(s.CPUStats.OnlineCPUs)
	if cpus == 0 {
		cpus = float64(len(s.CPUStats.CPUUsage.PercpuUsage))
	}
	if sysDelta <= 0 || cpuDelta < 0 {
		return "0.00%"
	}
	return fmt.Sprintf("%.2f%%", cpuDelta/sysDelta*cpus*100)
}

// memUsage subtracts the page cache, as docker stats does.
func memUsage(s container.StatsResponse) uint64 {
	u := s.MemoryStats.Usage
	for _, k := range []string{"total_inactive_file", "inactive_file"} {
		if v, ok := s.MemoryStats.Stats[k]; ok && v < u {
			return u - v
		}
	}
	return u
}
