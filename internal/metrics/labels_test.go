package metrics

import (
	"flag"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var update = flag.Bool("update", false, "rewrite testdata/exposed-labels.txt")

const exposedLabelsPath = "testdata/exposed-labels.txt"

// exposedLabels maps each metric name of the realistic scrape to the label
// names its series carry; histograms also answer for _bucket, _sum and
// _count. Prometheus adds instance and job to every series.
func exposedLabels(t *testing.T) map[string]map[string]bool {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(realisticEndpoint(t)))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	for name, f := range fams {
		ls := map[string]bool{"instance": true, "job": true, "__name__": true}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				ls[l.GetName()] = true
			}
		}
		out[name] = ls
		if f.GetType().String() == "HISTOGRAM" {
			bucket := map[string]bool{"le": true}
			for l := range ls {
				bucket[l] = true
			}
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = bucket, ls, ls
		}
	}
	return out
}

// testdata/exposed-labels.txt is every ds01_ metric name of the realistic
// scrape with the label names its series carry, one "name label..." line
// each: the Grafana dashboard's test (tools/dashboard, run by make test)
// checks the dashboard's and docs/METRICS.md's PromQL against it. A metric
// or label renamed here fails until the file follows (go test
// ./internal/metrics -run TestExposedLabelsFile -update), and then the
// dashboard's test until the dashboard does.
func TestExposedLabelsFile(t *testing.T) {
	var lines []string
	for name, ls := range exposedLabels(t) {
		if !strings.HasPrefix(name, "ds01_") {
			continue // the dashboard checks only ours; Go's and the process's vary by version
		}
		var names []string
		for l := range ls {
			names = append(names, l)
		}
		sort.Strings(names)
		lines = append(lines, name+" "+strings.Join(names, " "))
	}
	sort.Strings(lines)
	want := strings.Join(lines, "\n") + "\n"
	if *update {
		if err := os.WriteFile(exposedLabelsPath, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(exposedLabelsPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s is not what the endpoint exposes (go test ./internal/metrics -run TestExposedLabelsFile -update rewrites it):\n%s", exposedLabelsPath, want)
	}
}
