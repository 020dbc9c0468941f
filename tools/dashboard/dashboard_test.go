// Package dashboard checks the Grafana dashboard (docs/grafana) and the
// PromQL examples of docs/METRICS.md against the metrics the endpoint
// exposes (internal/metrics/testdata/exposed-labels.txt, which a test of
// internal/metrics keeps current). It lives in the tools module so that
// the PromQL parser (github.com/prometheus/prometheus) stays out of the
// product's go.mod; make test runs it.
package dashboard

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	promlabels "github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

const (
	dashboardPath = "../../docs/grafana/ds01-fleet.json"
	metricsDoc    = "../../docs/METRICS.md"
	labelsPath    = "../../internal/metrics/testdata/exposed-labels.txt"
)

// exposedLabels maps each metric name the endpoint exposes to the label
// names its series carry (histograms also answer for _bucket, _sum and
// _count; Prometheus adds instance and job to every series).
func exposedLabels(t *testing.T) map[string]map[string]bool {
	t.Helper()
	b, err := os.ReadFile(labelsPath)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		ls := map[string]bool{}
		for _, l := range f[1:] {
			ls[l] = true
		}
		out[f[0]] = ls
	}
	if len(out) < 20 { // the file has lost its lines
		t.Fatalf("%s lists %d metrics", labelsPath, len(out))
	}
	return out
}

// grafanaVars stands in for Grafana's variables: durations for the
// interval ones, a regular expression that matches anything for the
// multi-value ones ($instance and $user are used with =~), a number for
// the busy threshold.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "${__rate_interval}", "5m",
	"$__interval", "1m", "${__interval}", "1m",
	"$__range", "1h", "${__range}", "1h",
	"${instance}", ".*", "$instance", ".*",
	"${user}", ".*", "$user", ".*",
	"${busy}", "0.05", "$busy", "0.05",
	"${datasource}", "prometheus", "$datasource", "prometheus",
)

// panelExprs walks the dashboard's panels (rows may nest them) and returns
// every target's expression, by panel title.
func panelExprs(t *testing.T, panels []any, out map[string][]string) {
	for _, p := range panels {
		pm, ok := p.(map[string]any)
		if !ok {
			t.Fatalf("panel %v is not an object", p)
		}
		title, _ := pm["title"].(string)
		if sub, ok := pm["panels"].([]any); ok {
			panelExprs(t, sub, out)
		}
		if pm["type"] == "row" {
			continue
		}
		targets, _ := pm["targets"].([]any)
		if len(targets) == 0 {
			t.Errorf("panel %q has no targets", title)
		}
		for _, tg := range targets {
			expr, _ := tg.(map[string]any)["expr"].(string)
			if expr == "" {
				t.Errorf("panel %q has a target without expr", title)
			}
			out[title] = append(out[title], expr)
		}
		if ds, _ := pm["datasource"].(map[string]any); ds["uid"] != "${datasource}" {
			t.Errorf("panel %q: datasource %v, want the ${datasource} variable", title, pm["datasource"])
		}
	}
}

// The dashboard loads, every expression in it parses, and every metric and
// label it selects or groups by is one the endpoint exposes: renaming a
// metric or a label fails here until the dashboard follows.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		SchemaVersion int    `json:"schemaVersion"`
		UID           string `json:"uid"`
		Panels        []any  `json:"panels"`
		Templating    struct {
			List []struct {
				Name, Type string
				Query      any
			}
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	if dash.SchemaVersion < 36 || dash.UID == "" {
		t.Errorf("schemaVersion %d, uid %q", dash.SchemaVersion, dash.UID)
	}
	exprs := map[string][]string{}
	panelExprs(t, dash.Panels, exprs)
	// The variables' label_values(selector, label) queries select too.
	vars := map[string]bool{}
	valuesOf := map[string][2]string{} // variable: selector, label
	labelValues := regexp.MustCompile(`^label_values\((.*),\s*(\w+)\)$`)
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
		q, ok := v.Query.(map[string]any)
		if v.Type != "query" || !ok {
			continue
		}
		m := labelValues.FindStringSubmatch(q["query"].(string))
		if m == nil {
			t.Errorf("variable %s: query %v is not label_values(selector, label)", v.Name, q["query"])
			continue
		}
		exprs["variable "+v.Name] = append(exprs["variable "+v.Name], m[1])
		valuesOf[v.Name] = [2]string{m[1], m[2]}
	}
	for _, want := range []string{"datasource", "instance", "user"} {
		if !vars[want] {
			t.Errorf("no %s variable", want)
		}
	}

	exposed := exposedLabels(t)
	promql := parser.NewParser(parser.Options{})
	for v, q := range valuesOf {
		sel, err := promql.ParseMetricSelector(grafanaVars.Replace(q[0]))
		if err != nil {
			t.Errorf("variable %s: %v", v, err)
			continue
		}
		for _, m := range sel {
			if m.Name == model.MetricNameLabel && !exposed[m.Value][q[1]] {
				t.Errorf("variable %s: %s has no label %s", v, m.Value, q[1])
			}
		}
	}
	ck := newChecker(t, exposed)
	for title, list := range exprs {
		for _, raw := range list {
			ck.check(title, raw)
		}
	}
	used := ck.used
	// The fleet view covers what the issue asks of it.
	for _, want := range []string{"ds01_workload_gpus_allocated", "ds01_workload_gpu_memory_used_bytes", "ds01_workload_gpu_utilization_ratio",
		"ds01_user_gpu_busy_seconds_total", "ds01_user_gpu_held_seconds_total", "ds01_workload_gpu_idle_seconds", "ds01_workload_gpu_idle", "ds01_workload_info",
		"ds01_workload_idle_seconds", "ds01_workload_cpu_usage_seconds_total",
		"ds01_detector_source_up", "ds01_detector_last_scan_timestamp_seconds", "ds01_detector_scan_duration_seconds_bucket",
		"ds01_detector_events_dropped_total", "ds01_detector_build_info"} {
		if !used[want] {
			t.Errorf("the dashboard does not use %s", want)
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("%d panels and variables use %d metrics: %s", len(exprs), len(names), strings.Join(names, " "))
}

// checker parses PromQL and checks its metrics and labels against the
// endpoint's. Metrics of other exporters (DCGM_*) pass unchecked.
type checker struct {
	t       *testing.T
	exposed map[string]map[string]bool
	used    map[string]bool
	promql  parser.Parser
}

func newChecker(t *testing.T, exposed map[string]map[string]bool) *checker {
	return &checker{t: t, exposed: exposed, used: map[string]bool{}, promql: parser.NewParser(parser.Options{})}
}

func ours(name string) bool { return strings.HasPrefix(name, "ds01_") }

// need checks that every series of ours selected under node has the labels
// an aggregation groups by or a binary operation matches on.
func (c *checker) need(title string, node parser.Node, ls []string) {
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok && ours(vs.Name) {
			for _, l := range ls {
				if have, known := c.exposed[vs.Name]; known && !have[l] {
					c.t.Errorf("%s: %s has no label %s to group or match by", title, vs.Name, l)
				}
			}
		}
		return nil
	})
}

var leftover = regexp.MustCompile(`\$\{?\w+`)

func (c *checker) check(title, raw string) {
	t := c.t
	expr := grafanaVars.Replace(raw)
	if v := leftover.FindString(expr); v != "" {
		t.Errorf("%s: variable %s is not substituted by the test: %s", title, v, raw)
		return
	}
	node, err := c.promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %v\n%s", title, err, raw)
		return
	}
	selectors := 0
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			name := n.Name
			for _, m := range n.LabelMatchers {
				if m.Name == model.MetricNameLabel && m.Type == promlabels.MatchEqual {
					name = m.Value
				}
			}
			if name == "" {
				t.Errorf("%s: a selector without a metric name: %s", title, n)
				return nil
			}
			if !ours(name) {
				return nil
			}
			selectors++
			c.used[name] = true
			ls, ok := c.exposed[name]
			if !ok {
				t.Errorf("%s: metric %s is not exposed", title, name)
				return nil
			}
			for _, m := range n.LabelMatchers {
				if !ls[m.Name] {
					t.Errorf("%s: %s has no label %s", title, name, m.Name)
				}
			}
		case *parser.AggregateExpr:
			if !n.Without {
				c.need(title, n.Expr, n.Grouping)
			}
		case *parser.BinaryExpr:
			if vm := n.VectorMatching; vm != nil && vm.On {
				c.need(title, n.LHS, vm.MatchingLabels)
				c.need(title, n.RHS, vm.MatchingLabels)
			}
			if vm := n.VectorMatching; vm != nil && len(vm.Include) > 0 {
				one := n.RHS // group_left: the right side is the one
				if vm.Card == parser.CardOneToMany {
					one = n.LHS
				}
				c.need(title, one, vm.Include)
			}
		}
		return nil
	})
	if selectors == 0 {
		t.Errorf("%s: selects no metric of ours: %s", title, raw)
	}
}

// The PromQL examples of docs/METRICS.md parse and use the endpoint's
// metrics and labels.
func TestDocumentedQueries(t *testing.T) {
	b, err := os.ReadFile(metricsDoc)
	if err != nil {
		t.Fatal(err)
	}
	section := string(b)
	ck := newChecker(t, exposedLabels(t))
	n := 0
	for _, block := range regexp.MustCompile("(?s)```promql\n(.*?)```").FindAllStringSubmatch(section, -1) {
		// Queries are separated by comment lines.
		var q []string
		flush := func() {
			if len(q) > 0 {
				ck.check("docs/METRICS.md query", strings.Join(q, "\n"))
				n++
			}
			q = nil
		}
		for _, line := range strings.Split(block[1], "\n") {
			if l := strings.TrimSpace(line); l == "" || strings.HasPrefix(l, "#") {
				flush()
				continue
			}
			q = append(q, line)
		}
		flush()
	}
	if n < 2 {
		t.Errorf("%d PromQL examples in docs/METRICS.md", n)
	}
}
