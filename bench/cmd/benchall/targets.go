package main

import (
	"fmt"
	"io"
)

// target is one of issue 7's targets judged on an invocation's figures: the medians of its
// rounds (ours, and ours against River's in the same invocation).
type target struct {
	Name string `json:"name"`
	// Met is nil where the invocation did not measure what the target needs (a workload
	// skipped, or River not run).
	Met    *bool  `json:"met"`
	Detail string `json:"detail"`
}

// Issue 7's bounds.
const (
	sustainedFloor = 5000 // runs/s, one CreateRun per run
	sustainedRatio = 1.6  // × River's sustained throughput
	issueBurndown  = 100_000
)

// targets judges issue 7's targets on the summary rows; the details give ratios to three
// decimals, so that a ratio just under a bound (1.596×) does not print as meeting it. The sustained target is judged for
// each sustained workload that ran (8 creators, River's configuration in the issue, and
// --wide-concurrency creators for both systems); claim latency is a store benchmark, not
// a workload here, and is named with its command.
func targets(rows []row, cfg config) []target {
	find := func(workload, metric string) (row, bool) {
		for _, r := range rows {
			if r.Workload == workload && r.Metric == metric {
				return r, r.Ours.N > 0 && r.River.N > 0
			}
		}
		return row{}, false
	}
	var out []target
	for _, w := range []string{wSustained, wSustainedWide} {
		if w == wSustainedWide && cfg.wideConcurrency == 0 {
			continue
		}
		r, ok := find(w, "throughput (jobs/s)")
		t := target{Name: fmt.Sprintf("sustained ≥ %s runs/s and ≥ %.1f× River, %d creators", thousands(sustainedFloor), sustainedRatio, cfg.creators(w))}
		if ok {
			met := r.Ours.Median >= sustainedFloor && r.Ratio >= sustainedRatio
			t.Met = &met
			t.Detail = fmt.Sprintf("%.0f runs/s, %.3f× River's %.0f", r.Ours.Median, r.Ratio, r.River.Median)
		}
		out = append(out, t)
	}
	r, ok := find(wBurndown, "throughput (jobs/s)")
	t := target{Name: fmt.Sprintf("burn-down of %s ≥ River's rate", thousands(cfg.burndown))}
	if cfg.burndown != issueBurndown {
		t.Name += fmt.Sprintf(" (issue 7's: %s)", thousands(issueBurndown))
	}
	if ok {
		met := r.Ratio >= 1
		t.Met = &met
		t.Detail = fmt.Sprintf("%.0f against %.0f runs/s, %.3f×", r.Ours.Median, r.River.Median, r.Ratio)
	}
	out = append(out, t)
	r, ok = find(wLatency, "enqueue→start p99 (ms)")
	t = target{Name: fmt.Sprintf("enqueue→start p99 ≤ River's at %.0f runs/s offered", cfg.rate)}
	if ok {
		met := r.Ratio <= 1
		t.Met = &met
		t.Detail = fmt.Sprintf("%.2f against %.2f ms, %.3f×", r.Ours.Median, r.River.Median, r.Ratio)
	}
	out = append(out, t)
	out = append(out, target{Name: "claim latency flat from 0 to 1,000,000 queued",
		Detail: "not a workload here: cd pkg && go test -run '^$' -bench 'ClaimLatency/queued=(0|1M)$' -benchtime 2000x ./store/"})
	return out
}

func printTargets(w io.Writer, ts []target) {
	fmt.Fprintln(w, "\nissue 7's targets, on the medians above:")
	for _, t := range ts {
		verdict := "not measured"
		switch {
		case t.Met == nil:
		case *t.Met:
			verdict = "met"
		default:
			verdict = "NOT MET"
		}
		if t.Detail != "" {
			verdict += ": " + t.Detail
		}
		fmt.Fprintf(w, "  %-62s %s\n", t.Name, verdict)
	}
}

// thousands writes n with a comma between groups of three digits.
func thousands(n int) string {
	if n < 0 {
		return "-" + thousands(-n)
	}
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
