//go:build integration

package metrics

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// promtoolMetricsLint is `promtool check metrics` over the endpoint's output
// for a realistic cycle: names, units, _total suffixes and help texts as
// the Prometheus conventions want them. Any remark fails.
func TestPromtoolCheckMetrics(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool (Debian package prometheus) is needed; 'make test' installs it")
	}
	body := realisticEndpoint(t)
	for _, w := range []string{"ds01_workload_info{", "ds01_workload_gpus_allocated{", "ds01_workload_gpu_utilization_ratio{", "ds01_gpu_memory_used_bytes{"} {
		if !strings.Contains(body, w) {
			t.Errorf("the fixture does not exercise %s", w)
		}
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestAlertRules(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool (Debian package prometheus) is needed; 'make test' installs it")
	}
	docs := filepath.Join("..", "..", "docs")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = docs
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
