// promcheck: what Prometheus itself makes of the monitoring files in deploy/monitoring.
//
//	promcheck CONFIG.yml DASHBOARD.json...
//
// The scrape config is loaded with Prometheus's own config loader (what `prometheus
// --config.file` does at start: unknown keys, bad durations, bad relabelling are errors); every
// PromQL expression of each Grafana dashboard (its panels' targets and its variables' queries,
// Grafana's $variables replaced by values) is parsed with Prometheus's PromQL parser, and the
// metric names its selectors name are collected. Prints one JSON document:
//
//	{"jobs": [{"job": ..., "metrics_path": ..., "targets": [...]}], "metrics": [...], "exprs": N}
//
// and exits 1 naming the file and the expression when something does not load or parse.
package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type job struct {
	Job         string   `json:"job"`
	MetricsPath string   `json:"metrics_path"`
	Targets     []string `json:"targets"`
}

// Grafana's variables, replaced by what they stand for at query time
var grafanaVars = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\$__rate_interval|\$\{__rate_interval\}|\$__interval|\$\{__interval\}|\$__range|\$\{__range\}`), "5m"},
	{regexp.MustCompile(`\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?`), ".*"},
}

func exprs(node any, out *[]string) {
	switch v := node.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && (k == "expr" || (k == "query" && strings.Contains(s, "("))) {
				*out = append(*out, s)
				continue
			}
			if q, ok := x.(map[string]any); ok && k == "query" {
				if s, ok := q["query"].(string); ok {
					*out = append(*out, s)
				}
				continue
			}
			exprs(x, out)
		}
	case []any:
		for _, x := range v {
			exprs(x, out)
		}
	}
}

// label_values(metric, label) is a Grafana function, not PromQL: its metric is what counts
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*([^,()]+?)\s*,\s*[A-Za-z_]+\s*\)\s*$`)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "promcheck: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: promcheck CONFIG.yml DASHBOARD.json...")
	}
	cfg, err := config.LoadFile(os.Args[1], false, slog.New(slog.DiscardHandler))
	if err != nil {
		fail("%s: %v", os.Args[1], err)
	}
	promql := parser.NewParser(parser.Options{})
	result := struct {
		Jobs    []job    `json:"jobs"`
		Metrics []string `json:"metrics"`
		Exprs   int      `json:"exprs"`
	}{Jobs: []job{}, Metrics: []string{}}
	for _, sc := range cfg.ScrapeConfigs {
		j := job{Job: sc.JobName, MetricsPath: sc.MetricsPath, Targets: []string{}}
		for _, sd := range sc.ServiceDiscoveryConfigs {
			if static, ok := sd.(discovery.StaticConfig); ok {
				for _, g := range static {
					for _, t := range g.Targets {
						for _, v := range t {
							j.Targets = append(j.Targets, string(v))
						}
					}
				}
			}
		}
		result.Jobs = append(result.Jobs, j)
	}
	names := map[string]bool{}
	for _, path := range os.Args[2:] {
		raw, err := os.ReadFile(path)
		if err != nil {
			fail("%v", err)
		}
		var doc any
		if err := json.Unmarshal(raw, &doc); err != nil {
			fail("%s: not JSON: %v", path, err)
		}
		var found []string
		exprs(doc, &found)
		for _, e := range found {
			q := e
			if m := labelValues.FindStringSubmatch(q); m != nil {
				q = m[1]
			}
			for _, v := range grafanaVars {
				q = v.re.ReplaceAllString(q, v.with)
			}
			ast, err := promql.ParseExpr(q)
			if err != nil {
				fail("%s: %q: %v", path, e, err)
			}
			result.Exprs++
			parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
				if vs, ok := n.(*parser.VectorSelector); ok {
					name := vs.Name
					for _, m := range vs.LabelMatchers {
						if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
							name = m.Value
						}
					}
					if name != "" {
						names[name] = true
					}
				}
				return nil
			})
		}
	}
	for n := range names {
		result.Metrics = append(result.Metrics, n)
	}
	sort.Strings(result.Metrics)
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}
