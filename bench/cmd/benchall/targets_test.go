package main

import (
	"bytes"
	"strings"
	"testing"
)

// summaryOf builds the summary rows of an invocation whose every workload ran in both
// systems, from the medians of invocation M in docs/performance.md.
func summaryOf(cfg config, ours, river map[string]float64) []row {
	var rows []row
	for _, m := range metrics(cfg) {
		key := m.workload + "/" + m.metric
		o, ok := ours[key]
		if !ok {
			continue
		}
		r := row{Workload: m.workload, Metric: m.metric, Ours: stat{Median: o, N: 3}}
		if v, ok := river[key]; ok {
			r.River = stat{Median: v, N: 3}
			r.Ratio = o / v
		}
		rows = append(rows, r)
	}
	return rows
}

func TestTargetsJudgeTheMedians(t *testing.T) {
	cfg, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	ours := map[string]float64{
		"sustained/throughput (jobs/s)":      4796,
		"sustained_wide/throughput (jobs/s)": 6305,
		"burndown/throughput (jobs/s)":       22432,
		"latency/enqueue→start p99 (ms)":     2.89,
	}
	river := map[string]float64{
		"sustained/throughput (jobs/s)":      3602,
		"sustained_wide/throughput (jobs/s)": 3630,
		"burndown/throughput (jobs/s)":       19510,
		"latency/enqueue→start p99 (ms)":     4.89,
	}
	got := targets(summaryOf(cfg, ours, river), cfg)
	want := []struct {
		name string
		met  *bool
	}{
		{"8 creators", ptr(false)}, // 4,796 < 5,000 and 1.33× < 1.6×
		{"16 creators", ptr(true)}, // 6,305 ≥ 5,000 and 1.74×
		{"burn-down of 100,000 ≥", ptr(true)},
		{"enqueue→start p99", ptr(true)},
		{"claim latency", nil},
	}
	if len(got) != len(want) {
		t.Fatalf("%d targets, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if !strings.Contains(got[i].Name, w.name) {
			t.Errorf("target %d is %q, want one naming %q", i, got[i].Name, w.name)
		}
		if (got[i].Met == nil) != (w.met == nil) || (w.met != nil && *got[i].Met != *w.met) {
			t.Errorf("%s: met %v, want %v (%s)", got[i].Name, deref(got[i].Met), deref(w.met), got[i].Detail)
		}
	}

	// Just under 1.6× River (6,145 against 3,850: 1.596×, invocation O's 16 creators): not
	// met, and the detail shows why.
	ours["sustained/throughput (jobs/s)"], river["sustained/throughput (jobs/s)"] = 6145, 3850
	if tg := targets(summaryOf(cfg, ours, river), cfg)[0]; tg.Met == nil || *tg.Met || !strings.Contains(tg.Detail, "1.596×") {
		t.Errorf("6,145 against 3,850 runs/s: met %v, %q", deref(tg.Met), tg.Detail)
	}
	// Fast enough but not 1.6× River: still not met; 1.6× River but under 5,000: not met.
	ours["sustained/throughput (jobs/s)"], river["sustained/throughput (jobs/s)"] = 5200, 3500
	if m := targets(summaryOf(cfg, ours, river), cfg)[0].Met; m == nil || *m {
		t.Errorf("5,200 runs/s at 1.49× River judged met")
	}
	ours["sustained/throughput (jobs/s)"], river["sustained/throughput (jobs/s)"] = 4900, 3000
	if m := targets(summaryOf(cfg, ours, river), cfg)[0].Met; m == nil || *m {
		t.Errorf("4,900 runs/s at 1.63× River judged met")
	}
	// A slower burn-down and a longer p99 than River's are not met.
	ours["burndown/throughput (jobs/s)"], ours["latency/enqueue→start p99 (ms)"] = 19000, 5.2
	ts := targets(summaryOf(cfg, ours, river), cfg)
	if *ts[2].Met || *ts[3].Met {
		t.Errorf("burn-down at 0.97× and p99 at 1.06× River judged met: %+v", ts[2:4])
	}

	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 100000: "100,000", 1234567: "1,234,567", -5000: "-5,000"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
	cfg.burndown = 5000
	if name := targets(summaryOf(cfg, ours, river), cfg)[2].Name; !strings.Contains(name, "burn-down of 5,000 ≥ River's rate (issue 7's: 100,000)") {
		t.Errorf("a smaller burn-down is named %q", name)
	}

	// Ours only: nothing to compare with, nothing judged; no 16-creator line without it.
	cfg.only, cfg.wideConcurrency = "ours", 0
	ts = targets(summaryOf(cfg, ours, nil), cfg)
	if len(ts) != 4 {
		t.Fatalf("%d targets without the 16-creator workload, want 4", len(ts))
	}
	for _, tg := range ts {
		if tg.Met != nil {
			t.Errorf("%s judged without River: %v", tg.Name, *tg.Met)
		}
	}
	var out bytes.Buffer
	printTargets(&out, ts)
	if !strings.Contains(out.String(), "not measured") {
		t.Errorf("printed:\n%s", out.String())
	}
}

func ptr(b bool) *bool { return &b }

func deref(b *bool) any {
	if b == nil {
		return nil
	}
	return *b
}
